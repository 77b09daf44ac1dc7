//! Compute devices: CUDA (burn's cuda backend), wgpu (Vulkan/Metal/DX12 through burn's
//! wgpu backend) and CPU (burn's flex backend), chosen with `--device auto|cuda|wgpu|cpu`.
//!
//! `auto` probes CUDA first without touching burn (burn's CUDA runtime panics when the
//! driver library is missing), then looks for a hardware wgpu adapter, then uses the CPU.
//! Every choice carries the reason, so the CLI and the app can say why.

use std::fmt;

/// The CPU backend.
pub type Cpu = burn::backend::Flex;
/// The wgpu backend (WGSL kernels).
pub type Wgpu = burn::backend::Wgpu;
/// The CUDA backend.
pub type Cuda = burn::backend::Cuda;

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Cuda,
    Wgpu,
    Cpu,
}

impl std::str::FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cuda" | "gpu" => Ok(Self::Cuda),
            "wgpu" | "vulkan" | "metal" => Ok(Self::Wgpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(format!(
                "unknown device \"{other}\" (use auto, cuda, wgpu or cpu)"
            )),
        }
    }
}

/// Floating-point precision of the model on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp16 on CUDA (as scGPT runs under autocast), fp32 elsewhere.
    Auto,
    F32,
    /// Half precision (GPU backends only; the CPU backend always computes in fp32).
    F16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "half" | "float16" => Ok(Self::F16),
            other => Err(format!(
                "unknown precision \"{other}\" (use auto, f32 or f16)"
            )),
        }
    }
}

impl Precision {
    /// Whether a backend computes in half precision for this request.
    pub fn half_on(self, backend: BackendKind) -> bool {
        match (self, backend) {
            (_, BackendKind::Cpu) => false,
            (Precision::F16, _) => true,
            (Precision::Auto, BackendKind::Cuda) => true,
            _ => false,
        }
    }
}

/// The backend a job will run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Cuda,
    Wgpu,
    Cpu,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Cuda => "CUDA",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cpu => "CPU",
        })
    }
}

/// A resolved device with a human-readable description and the reason it was chosen.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceChoice {
    pub backend: BackendKind,
    /// e.g. "NVIDIA H200 (139.8 GiB)", "llvmpipe (software)", "CPU (16 threads)".
    pub name: String,
    pub reason: String,
    /// Computes in half precision.
    pub half: bool,
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let precision = if self.half { "fp16" } else { "fp32" };
        match self.backend {
            BackendKind::Cpu => write!(f, "{}, {precision} ({})", self.name, self.reason),
            _ => write!(
                f,
                "{} on {}, {precision} ({})",
                self.backend, self.name, self.reason
            ),
        }
    }
}

/// A CUDA GPU found by the driver probe.
#[derive(Clone, Debug)]
pub struct CudaGpu {
    pub name: String,
    pub total_bytes: usize,
}

/// Probe the CUDA driver without burn: `Err(reason)` when there is none.
pub fn probe_cuda() -> Result<CudaGpu, String> {
    // SAFETY: loading the CUDA driver library runs its initialisers; this is the same
    // library burn would load, and nothing else in the process depends on its absence.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return Err("no CUDA driver (libcuda) on this machine".into());
    }
    let count = cudarc::driver::CudaContext::device_count()
        .map_err(|e| format!("the CUDA driver did not start: {e:?}"))?;
    if count < 1 {
        return Err("the CUDA driver reports no GPU".into());
    }
    let ctx = cudarc::driver::CudaContext::new(0)
        .map_err(|e| format!("could not open CUDA GPU 0: {e:?}"))?;
    let name = ctx.name().unwrap_or_else(|_| "CUDA GPU".into());
    let total_bytes = ctx.total_mem().unwrap_or(0);
    Ok(CudaGpu { name, total_bytes })
}

/// Look for a wgpu adapter; `Ok((name, is_software))`.
pub fn probe_wgpu() -> Result<(String, bool), String> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    // Vulkan, Metal, DX12: the backends burn's wgpu runtime computes on (GL is not one).
    desc.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(desc);
    let adapter = block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
    }))
    .map_err(|e| format!("no wgpu adapter: {e}"))?;
    let info = adapter.get_info();
    let software = info.device_type == wgpu::DeviceType::Cpu;
    Ok((format!("{} ({:?})", info.name, info.backend), software))
}

/// Drive a future to completion on this thread (wgpu's adapter request).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Whether the default wgpu adapter can run half-precision shaders.
pub fn wgpu_supports_f16() -> bool {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(desc);
    block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
    }))
    .map(|a| a.features().contains(wgpu::Features::SHADER_F16))
    .unwrap_or(false)
}

/// Number of CPU threads the CPU backend will use.
pub fn cpu_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn gib(bytes: usize) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Resolve a request to a device, with the reason.
pub fn choose(request: DeviceRequest) -> Result<DeviceChoice, String> {
    let cpu = |reason: String| DeviceChoice {
        backend: BackendKind::Cpu,
        name: format!("CPU ({} threads)", cpu_threads()),
        reason,
        half: false,
    };
    match request {
        DeviceRequest::Cpu => Ok(cpu("requested".into())),
        DeviceRequest::Cuda => {
            let gpu = probe_cuda().map_err(|e| format!("--device cuda: {e}"))?;
            Ok(DeviceChoice {
                backend: BackendKind::Cuda,
                name: format!("{} ({})", gpu.name, gib(gpu.total_bytes)),
                reason: "requested".into(),
                half: false,
            })
        }
        DeviceRequest::Wgpu => {
            let (name, software) = probe_wgpu().map_err(|e| format!("--device wgpu: {e}"))?;
            Ok(DeviceChoice {
                backend: BackendKind::Wgpu,
                name,
                reason: if software {
                    "requested (software adapter: slower than the CPU backend)".into()
                } else {
                    "requested".into()
                },
                half: false,
            })
        }
        DeviceRequest::Auto => {
            let cuda_reason = match probe_cuda() {
                Ok(gpu) => {
                    return Ok(DeviceChoice {
                        backend: BackendKind::Cuda,
                        name: format!("{} ({})", gpu.name, gib(gpu.total_bytes)),
                        reason: "CUDA GPU found".into(),
                        half: false,
                    });
                }
                Err(e) => e,
            };
            match probe_wgpu() {
                Ok((name, false)) => Ok(DeviceChoice {
                    backend: BackendKind::Wgpu,
                    name,
                    reason: format!("{cuda_reason}; using the GPU through wgpu"),
                    half: false,
                }),
                Ok((name, true)) => Ok(cpu(format!(
                    "{cuda_reason}; the only wgpu adapter is software ({name})"
                ))),
                Err(e) => Ok(cpu(format!("{cuda_reason}; {e}"))),
            }
        }
    }
}

/// Work written once, generic over the backend; [`dispatch`] runs it on the chosen one.
pub trait OnBackend {
    type Output;
    fn run<B: burn::tensor::backend::Backend>(self, device: &B::Device) -> Self::Output;
}

/// Work that trains (needs autodiff); [`dispatch_autodiff`] runs it on the chosen backend.
pub trait OnAutodiff {
    type Output;
    fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: &B::Device) -> Self::Output;
}

/// Run `job` on the backend `kind` with its default device.
pub fn dispatch<J: OnBackend>(kind: BackendKind, job: J) -> J::Output {
    match kind {
        BackendKind::Cpu => job.run::<Cpu>(&Default::default()),
        BackendKind::Wgpu => job.run::<Wgpu>(&burn::backend::wgpu::WgpuDevice::default()),
        BackendKind::Cuda => job.run::<Cuda>(&burn::backend::cuda::CudaDevice::default()),
    }
}

/// Run `job` on the autodiff version of the backend `kind`.
pub fn dispatch_autodiff<J: OnAutodiff>(kind: BackendKind, job: J) -> J::Output {
    use burn::backend::Autodiff;
    match kind {
        BackendKind::Cpu => job.run::<Autodiff<Cpu>>(&Default::default()),
        BackendKind::Wgpu => job.run::<Autodiff<Wgpu>>(&burn::backend::wgpu::WgpuDevice::default()),
        BackendKind::Cuda => job.run::<Autodiff<Cuda>>(&burn::backend::cuda::CudaDevice::default()),
    }
}
