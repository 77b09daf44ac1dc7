// Scatter plot of cells: one instanced quad per point, a round point with an anti-aliased
// edge, coloured from a per-point RGBA. Positions are data coordinates mapped to clip space
// by the view transform (pan/zoom) in `Uniforms`.

struct Uniforms {
    // clip = data * scale + offset
    scale: vec2<f32>,
    offset: vec2<f32>,
    // point radius in pixels, and the viewport size in pixels
    radius_px: f32,
    _pad: f32,
    viewport_px: vec2<f32>,
};

@group(0) @binding(0) var<uniform> u: Uniforms;

struct PointIn {
    @location(0) position: vec2<f32>,
    @location(1) color: vec4<f32>,
};

struct VertexOut {
    @builtin(position) clip: vec4<f32>,
    @location(0) color: vec4<f32>,
    @location(1) local: vec2<f32>,
};

@vertex
fn vs_main(@builtin(vertex_index) corner: u32, point: PointIn) -> VertexOut {
    // Two triangles: corners (-1,-1) (1,-1) (-1,1) (-1,1) (1,-1) (1,1)
    var corners = array<vec2<f32>, 6>(
        vec2<f32>(-1.0, -1.0), vec2<f32>(1.0, -1.0), vec2<f32>(-1.0, 1.0),
        vec2<f32>(-1.0, 1.0), vec2<f32>(1.0, -1.0), vec2<f32>(1.0, 1.0),
    );
    let c = corners[corner % 6u];
    let center = point.position * u.scale + u.offset;
    let pixel_to_clip = 2.0 / max(u.viewport_px, vec2<f32>(1.0, 1.0));
    var out: VertexOut;
    out.clip = vec4<f32>(center + c * u.radius_px * pixel_to_clip, 0.0, 1.0);
    out.color = point.color;
    out.local = c;
    return out;
}

@fragment
fn fs_main(in: VertexOut) -> @location(0) vec4<f32> {
    let d = length(in.local);
    let edge = fwidth(d);
    let alpha = 1.0 - smoothstep(1.0 - edge, 1.0, d);
    if (alpha <= 0.0) {
        discard;
    }
    return vec4<f32>(in.color.rgb, in.color.a * alpha);
}
