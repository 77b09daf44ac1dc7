//! Frame times on whatever adapter egui_kittest picks (lavapipe here).
//! Run with `cargo test -p cellforge --release --test scatter_perf -- --ignored --nocapture`
//! (numbers in BENCHMARKS.md).

use std::iter::once;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellforge::gui::scatter::{ScatterPoints, ScatterRenderer, ScatterView, scatter_ui};
use cellforge::gui::selection::{SelectMode, Selection};
use egui::{Pos2, Rect, vec2};
use egui_wgpu::wgpu;

const SIZE: [u32; 2] = [1280, 800];

/// `n` points in 12 Gaussian-ish blobs (deterministic LCG).
fn blobs(n: usize) -> ScatterPoints {
    let mut s = 0x2545_f491_4f6c_dd1d_u64;
    let mut rnd = || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((s >> 40) as f32) / (1u64 << 24) as f32
    };
    let palette: [[u8; 4]; 12] = std::array::from_fn(|k| {
        let h = k as f32 / 12.0 * 6.0;
        let f = |o: f32| ((((h + o) % 6.0) - 3.0).abs() - 1.0).clamp(0.0, 1.0);
        [
            (f(0.0) * 255.0) as u8,
            (f(4.0) * 255.0) as u8,
            (f(2.0) * 255.0) as u8,
            255,
        ]
    });
    let (mut pos, mut col) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let c = i % 12;
        let (cx, cy) = ((c % 4) as f32 * 6.0, (c / 4) as f32 * 6.0);
        let g = |r: &mut dyn FnMut() -> f32| (r() + r() + r() - 1.5) * 2.0;
        pos.push([cx + g(&mut rnd), cy + g(&mut rnd)]);
        col.push(palette[c]);
    }
    ScatterPoints::new(pos, col)
}

struct Bench {
    rs: egui_wgpu::RenderState,
    ctx: egui::Context,
    view_tex: wgpu::TextureView,
}

impl Bench {
    fn new() -> Self {
        let rs = egui_kittest::wgpu::create_render_state(
            egui_kittest::wgpu::default_wgpu_setup(),
            egui_wgpu::RendererOptions::default(),
        );
        eprintln!("adapter: {:?}", rs.adapter.get_info());
        ScatterRenderer::install(&rs);
        let tex = rs.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("bench target"),
            size: wgpu::Extent3d {
                width: SIZE[0],
                height: SIZE[1],
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: rs.target_format,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
            view_formats: &[],
        });
        let view_tex = tex.create_view(&wgpu::TextureViewDescriptor::default());
        Self {
            rs,
            ctx: egui::Context::default(),
            view_tex,
        }
    }

    /// One full frame: egui pass + tessellation (cpu), then prepare + render +
    /// wait for the GPU (gpu). Returns (cpu, gpu).
    fn frame(&self, view: &mut ScatterView, points: &Arc<ScatterPoints>) -> (Duration, Duration) {
        let t0 = Instant::now();
        let input = egui::RawInput {
            screen_rect: Some(Rect::from_min_size(
                Pos2::ZERO,
                vec2(SIZE[0] as f32, SIZE[1] as f32),
            )),
            ..Default::default()
        };
        let out = self.ctx.run_ui(input, |ui| {
            scatter_ui(ui, view, points);
        });
        let prims = self.ctx.tessellate(out.shapes, out.pixels_per_point);
        let t1 = Instant::now();

        let mut renderer = self.rs.renderer.write();
        for (id, delta) in &out.textures_delta.set {
            renderer.update_texture(&self.rs.device, &self.rs.queue, *id, delta);
        }
        let screen = egui_wgpu::ScreenDescriptor {
            size_in_pixels: SIZE,
            pixels_per_point: out.pixels_per_point,
        };
        let mut enc = self
            .rs
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        let user =
            renderer.update_buffers(&self.rs.device, &self.rs.queue, &mut enc, &prims, &screen);
        {
            let mut pass = enc
                .begin_render_pass(&wgpu::RenderPassDescriptor {
                    label: Some("bench"),
                    color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                        view: &self.view_tex,
                        resolve_target: None,
                        ops: wgpu::Operations {
                            load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                            store: wgpu::StoreOp::Store,
                        },
                        depth_slice: None,
                    })],
                    ..Default::default()
                })
                .forget_lifetime();
            renderer.render(&mut pass, &prims, &screen);
        }
        self.rs
            .queue
            .submit(user.into_iter().chain(once(enc.finish())));
        self.rs
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(Duration::from_secs(60)),
            })
            .expect("poll");
        (t1 - t0, t1.elapsed())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run(n: usize, radius: f32) {
    let bench = Bench::new();
    let points = Arc::new(blobs(n));
    let mut view = ScatterView::new();
    view.point_radius = radius;

    let (c, g) = bench.frame(&mut view, &points);
    println!(
        "n={n} r={radius}: first frame (upload) cpu {:.1} ms + gpu {:.1} ms",
        ms(c),
        ms(g)
    );
    let _ = view.index(); // let the index thread finish outside the timings
    std::thread::sleep(Duration::from_millis(300));
    let _ = view.index();

    let frames = 10;
    let report = |label: &str, view: &mut ScatterView, pan: bool| {
        let (mut cpu, mut gpu) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..frames {
            if pan && let Some(v) = view.view_mut() {
                v.pan([3.0, 2.0]);
            }
            let (c, g) = bench.frame(view, &points);
            cpu += c;
            gpu += g;
        }
        println!(
            "n={n} r={radius}: {label}: cpu {:.2} ms + gpu {:.2} ms per frame",
            ms(cpu) / frames as f64,
            ms(gpu) / frames as f64
        );
    };
    report("static redraw", &mut view, false);
    report("pan redraw", &mut view, true);
    let mut sel = Selection::new(n);
    let half: Vec<u32> = (0..n as u32).step_by(2).collect();
    sel.combine(SelectMode::Replace, &half);
    view.set_selection(sel);
    let (c, g) = bench.frame(&mut view, &points);
    println!(
        "n={n} r={radius}: selection of n/2 changed: cpu {:.1} ms + gpu {:.1} ms",
        ms(c),
        ms(g)
    );
    report("pan redraw with n/2 selected", &mut view, true);
}

#[test]
#[ignore = "a timing report, not a check (seconds per frame on a software rasteriser); run with `cargo test -p cellforge --release --test scatter_perf -- --ignored --nocapture`, also on the GPU machine when one is lent"]
fn frame_time_100k() {
    run(100_000, 2.0);
}

#[test]
#[ignore = "a timing report, not a check (seconds per frame on a software rasteriser); run with `cargo test -p cellforge --release --test scatter_perf -- --ignored --nocapture`, also on the GPU machine when one is lent"]
fn frame_time_1m() {
    run(1_000_000, 2.0);
    run(1_000_000, 1.0);
}
