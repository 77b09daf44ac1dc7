// Scatter plot of cells: one instanced triangle per point (an equilateral triangle whose
// inscribed circle holds the disc; 3 vertices instead of a quad's 6 halves the per-point
// vertex and primitive-setup work, which dominates for small points), a round point with an
// anti-aliased edge, coloured from a per-point RGBA (gamma-encoded sRGB, straight alpha).
//
// Two per-instance vertex buffers: slot 0 = data position (Float32x2), slot 1 = colour
// (Unorm8x4). Positions are data coordinates mapped to clip space of the paint-callback
// viewport by `Uniforms`; subtracting `origin` (the data point at the view centre) first
// keeps f32 precision when zoomed in far.
//
// The output is premultiplied alpha, matching egui's blend state (One, OneMinusSrcAlpha).

struct Uniforms {
    // clip = (data - origin) * scale + offset
    origin: vec2<f32>,
    scale: vec2<f32>,
    offset: vec2<f32>,
    // viewport size in physical pixels
    viewport_px: vec2<f32>,
    // point radius in physical pixels
    radius_px: f32,
    // 0 = normal colours, 1 = dimmed (unselected points while a selection exists)
    dim: f32,
    _pad: vec2<f32>,
};

@group(0) @binding(0) var<uniform> u: Uniforms;

struct PointIn {
    @location(0) position: vec2<f32>,
    @location(1) color: vec4<f32>,
};

struct VertexOut {
    @builtin(position) clip: vec4<f32>,
    @location(0) color: vec4<f32>,
    // offset from the point centre, in physical pixels
    @location(1) local_px: vec2<f32>,
};

@vertex
fn vs_main(@builtin(vertex_index) corner: u32, point: PointIn) -> VertexOut {
    // Triangle with inradius 1 around the centre: vertices at distance 2.
    var corners = array<vec2<f32>, 3>(
        vec2<f32>(0.0, 2.0), vec2<f32>(-1.7320508, -1.0), vec2<f32>(1.7320508, -1.0),
    );
    let c = corners[corner % 3u];
    // One pixel of slack around the disc so the anti-aliased rim is not cut off.
    let half_px = u.radius_px + 1.0;
    let center = (point.position - u.origin) * u.scale + u.offset;
    let px_to_clip = 2.0 / max(u.viewport_px, vec2<f32>(1.0, 1.0));

    let grey = dot(point.color.rgb, vec3<f32>(0.299, 0.587, 0.114));
    let rgb = mix(point.color.rgb, vec3<f32>(grey, grey, grey), 0.6 * u.dim);
    let alpha = point.color.a * (1.0 - 0.75 * u.dim);

    var out: VertexOut;
    out.clip = vec4<f32>(center + c * half_px * px_to_clip, 0.0, 1.0);
    out.color = vec4<f32>(rgb, alpha);
    out.local_px = c * half_px;
    return out;
}

fn coverage(local_px: vec2<f32>) -> f32 {
    // Analytic one-pixel-wide edge: 1 inside radius - 0.5, 0 outside radius + 0.5.
    return clamp(u.radius_px + 0.5 - length(local_px), 0.0, 1.0);
}

// For egui's usual gamma-space framebuffer (Rgba8Unorm / Bgra8Unorm).
@fragment
fn fs_main(in: VertexOut) -> @location(0) vec4<f32> {
    let a = in.color.a * coverage(in.local_px);
    if (a <= 0.0) {
        discard;
    }
    return vec4<f32>(in.color.rgb * a, a);
}

fn srgb_to_linear(c: vec3<f32>) -> vec3<f32> {
    let lo = c / 12.92;
    let hi = pow((c + 0.055) / 1.055, vec3<f32>(2.4, 2.4, 2.4));
    return select(hi, lo, c <= vec3<f32>(0.04045, 0.04045, 0.04045));
}

// For an sRGB framebuffer (the hardware re-encodes on write).
@fragment
fn fs_main_linear(in: VertexOut) -> @location(0) vec4<f32> {
    let a = in.color.a * coverage(in.local_px);
    if (a <= 0.0) {
        discard;
    }
    return vec4<f32>(srgb_to_linear(in.color.rgb) * a, a);
}
