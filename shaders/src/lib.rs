//! Every WGSL shader of cellforge, embedded at compile time, with the `#[repr(C)]` structs
//! that mirror their uniform and vertex layouts. Validated by naga in this crate's tests.

/// The scatter plot shader (instanced round points).
pub const SCATTER_WGSL: &str = include_str!("../wgsl/scatter.wgsl");

/// All shaders with their names, for validation and pipeline creation.
pub const ALL: &[(&str, &str)] = &[("scatter.wgsl", SCATTER_WGSL)];

/// Mirrors `Uniforms` in scatter.wgsl (48 bytes, 16-byte aligned as WGSL requires):
/// `clip = (data - origin) * scale + offset`, the viewport and point radius in physical
/// pixels, and `dim` (1 = draw dimmed: unselected points while a selection exists).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScatterUniforms {
    pub origin: [f32; 2],
    pub scale: [f32; 2],
    pub offset: [f32; 2],
    pub viewport_px: [f32; 2],
    pub radius_px: f32,
    pub dim: f32,
    pub _pad: [f32; 2],
}

/// The scatter shader's per-instance vertex buffers: slot 0 positions (`Float32x2`, data
/// coordinates), slot 1 colours (`Unorm8x4`, sRGB with straight alpha).
pub fn scatter_vertex_layouts() -> [wgpu::VertexBufferLayout<'static>; 2] {
    const POS: [wgpu::VertexAttribute; 1] = wgpu::vertex_attr_array![0 => Float32x2];
    const COLOR: [wgpu::VertexAttribute; 1] = wgpu::vertex_attr_array![1 => Unorm8x4];
    [
        wgpu::VertexBufferLayout {
            array_stride: 8,
            step_mode: wgpu::VertexStepMode::Instance,
            attributes: &POS,
        },
        wgpu::VertexBufferLayout {
            array_stride: 4,
            step_mode: wgpu::VertexStepMode::Instance,
            attributes: &COLOR,
        },
    ]
}
