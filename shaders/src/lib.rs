//! Every WGSL shader of cellforge, embedded at compile time, with the `#[repr(C)]` structs
//! that mirror their uniform and vertex layouts. Validated by naga in this crate's tests.

/// The scatter plot shader (instanced round points).
pub const SCATTER_WGSL: &str = include_str!("../wgsl/scatter.wgsl");

/// All shaders with their names, for validation and pipeline creation.
pub const ALL: &[(&str, &str)] = &[("scatter.wgsl", SCATTER_WGSL)];

/// Mirrors `Uniforms` in scatter.wgsl (32 bytes, 16-byte aligned as WGSL requires).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScatterUniforms {
    pub scale: [f32; 2],
    pub offset: [f32; 2],
    pub radius_px: f32,
    pub _pad: f32,
    pub viewport_px: [f32; 2],
}

/// Mirrors `PointIn` in scatter.wgsl: one instance per cell.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScatterPoint {
    pub position: [f32; 2],
    pub color: [f32; 4],
}

/// Vertex buffer layout of [`ScatterPoint`] (instance step mode).
pub fn scatter_point_layout() -> wgpu::VertexBufferLayout<'static> {
    const ATTRS: [wgpu::VertexAttribute; 2] =
        wgpu::vertex_attr_array![0 => Float32x2, 1 => Float32x4];
    wgpu::VertexBufferLayout {
        array_stride: std::mem::size_of::<ScatterPoint>() as wgpu::BufferAddress,
        step_mode: wgpu::VertexStepMode::Instance,
        attributes: &ATTRS,
    }
}
