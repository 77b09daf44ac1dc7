//! Long-running work off the UI thread: one named worker thread per job, a channel of
//! progress messages that wakes the UI, a cancel flag the engine polls through its event
//! callbacks, and one end state (done, failed or cancelled).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cellforge_core::anndata::AnnData;
use cellforge_core::train::History;

/// What a job is, for titles and for deciding what its result replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Load,
    Embed,
    Umap,
    Leiden,
    Finetune,
    Annotate,
    Export,
    Metrics,
    Preprocess,
    Map,
    Programs,
    Network,
    Markers,
}

impl JobKind {
    pub fn title(self) -> &'static str {
        match self {
            JobKind::Load => "Reading the dataset",
            JobKind::Embed => "Embedding cells",
            JobKind::Umap => "Neighbours and UMAP",
            JobKind::Leiden => "Leiden clustering",
            JobKind::Finetune => "Fine-tuning",
            JobKind::Annotate => "Annotating cells",
            JobKind::Export => "Exporting",
            JobKind::Metrics => "Integration metrics",
            JobKind::Preprocess => "Preprocessing",
            JobKind::Map => "Reference mapping",
            JobKind::Programs => "Gene programs",
            JobKind::Network => "Laying out the gene network",
            JobKind::Markers => "Marker genes of the selection",
        }
    }
}

/// A finished job's product.
pub enum Output {
    /// A dataset read from disk.
    Opened {
        adata: Box<AnnData>,
        path: PathBuf,
        summary: Box<cellforge_core::summary::Summary>,
        warnings: Vec<String>,
    },
    /// A model folder read from disk.
    OpenedModel(Box<super::work::ModelInfo>),
    /// A new version of the open dataset (written to `path`, a working file).
    Dataset {
        adata: Box<AnnData>,
        path: PathBuf,
        message: String,
    },
    /// A trained model folder.
    Model {
        dir: PathBuf,
        message: String,
        history: Box<History>,
        classes: Vec<String>,
    },
    /// Integration metrics of an embedding.
    Metrics {
        metrics: Box<cellforge_core::analysis::integration::IntegrationMetrics>,
        description: String,
    },
    /// Marker genes of the selected cells, best first.
    Markers { n_cells: usize, genes: Vec<String> },
    /// A laid-out gene network.
    Network(Box<super::network::GeneNetwork>),
    /// A file written for the user.
    Exported { path: PathBuf, message: String },
}

/// A failure in words a biologist understands, with the technical detail kept apart.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub title: String,
    pub detail: String,
}

impl Failure {
    pub fn new(title: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self {
            title: title.into(),
            detail: detail.to_string(),
        }
    }
}

/// How a job ended.
pub enum End {
    Done(Output),
    Failed(Failure),
    Cancelled,
}

enum Msg {
    Stage(String),
    Progress(u64, u64),
    Log(String),
    Step {
        step: u64,
        terms: Vec<(String, f64)>,
    },
    Valid {
        epoch: usize,
        loss: f64,
        acc: Option<f64>,
    },
    End(Result<Output, Failure>),
}

/// The worker's side: report progress, check for cancellation.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::Sender<Msg>,
    cancel: Arc<AtomicBool>,
    ctx: egui::Context,
}

impl Reporter {
    fn send(&self, m: Msg) {
        let _ = self.tx.send(m);
        self.ctx.request_repaint();
    }
    /// What the job is doing now ("Loading the model", "Writing").
    pub fn stage(&self, s: impl Into<String>) {
        self.send(Msg::Stage(s.into()));
    }
    pub fn progress(&self, done: u64, total: u64) {
        self.send(Msg::Progress(done, total));
    }
    pub fn log(&self, s: impl Into<String>) {
        self.send(Msg::Log(s.into()));
    }
    /// One optimiser step's loss terms (`total` last, as the engine reports them).
    pub fn train_step(&self, step: u64, terms: Vec<(String, f64)>) {
        self.send(Msg::Step { step, terms });
    }
    pub fn validation(&self, epoch: usize, loss: f64, acc: Option<f64>) {
        self.send(Msg::Valid { epoch, loss, acc });
    }
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
    /// `Break` once the user pressed Cancel (what the engine's event callbacks return).
    pub fn flow(&self) -> ControlFlow<()> {
        if self.cancelled() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// A job in flight, as the UI sees it.
pub struct Job {
    pub kind: JobKind,
    pub started: Instant,
    pub stage: String,
    pub progress: Option<(u64, u64)>,
    /// When `progress` first moved past zero, for the ETA.
    progress_start: Option<(Instant, u64)>,
    pub log: Vec<String>,
    /// Training loss per step (the weighted total).
    pub losses: Vec<[f64; 2]>,
    /// Each loss term per step (unweighted), by name, in first-seen order.
    pub terms: Vec<(String, Vec<[f64; 2]>)>,
    /// Validation loss and accuracy per epoch.
    pub valid: Vec<(usize, f64, Option<f64>)>,
    cancel: Arc<AtomicBool>,
    rx: mpsc::Receiver<Msg>,
    end: Option<Result<Output, Failure>>,
}

/// Starts `work` on a named thread. `ctx` is repainted on every message.
pub fn spawn(
    kind: JobKind,
    ctx: &egui::Context,
    work: impl FnOnce(&Reporter) -> Result<Output, Failure> + Send + 'static,
) -> Job {
    let (tx, rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let reporter = Reporter {
        tx: tx.clone(),
        cancel: cancel.clone(),
        ctx: ctx.clone(),
    };
    let spawned = std::thread::Builder::new()
        .name(format!("job-{kind:?}").to_lowercase())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&reporter)))
                .unwrap_or_else(|p| {
                    let what = cellforge_core::sys::panic_message(p.as_ref());
                    Err(Failure::new(
                        "cellforge hit an internal error; your data is unchanged",
                        what,
                    ))
                });
            reporter.send(Msg::End(r));
        });
    let mut job = Job {
        kind,
        started: Instant::now(),
        stage: "Starting".into(),
        progress: None,
        progress_start: None,
        log: Vec::new(),
        losses: Vec::new(),
        terms: Vec::new(),
        valid: Vec::new(),
        cancel,
        rx,
        end: None,
    };
    if let Err(e) = spawned {
        job.end = Some(Err(Failure::new("Could not start the job", e)));
    }
    job
}

impl Job {
    pub fn title(&self) -> &'static str {
        self.kind.title()
    }

    /// Asks the worker to stop at its next check.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelling(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Drains messages; returns the end state once the worker is finished. A cancelled job
    /// ends as `Cancelled` whatever the worker returned, so a result that arrives after the
    /// user pressed Cancel is discarded and the app's state stays as it was.
    pub fn poll(&mut self) -> Option<End> {
        while let Ok(m) = self.rx.try_recv() {
            match m {
                Msg::Stage(s) => self.stage = s,
                Msg::Progress(d, t) => {
                    if d > 0 && self.progress_start.is_none() {
                        self.progress_start = Some((Instant::now(), d));
                    }
                    self.progress = Some((d, t));
                }
                Msg::Log(s) => self.log.push(s),
                Msg::Step { step, terms } => {
                    for (name, v) in terms {
                        if name == "total" {
                            self.losses.push([step as f64, v]);
                            continue;
                        }
                        match self.terms.iter_mut().find(|t| t.0 == name) {
                            Some(t) => t.1.push([step as f64, v]),
                            None => self.terms.push((name, vec![[step as f64, v]])),
                        }
                    }
                }
                Msg::Valid { epoch, loss, acc } => self.valid.push((epoch, loss, acc)),
                Msg::End(r) => self.end = Some(r),
            }
        }
        let r = self.end.take()?;
        Some(if self.is_cancelling() {
            End::Cancelled
        } else {
            match r {
                Ok(o) => End::Done(o),
                Err(f) => End::Failed(f),
            }
        })
    }

    /// Fraction done, when the job reports it.
    pub fn fraction(&self) -> Option<f32> {
        let (d, t) = self.progress?;
        (t > 0).then(|| (d as f64 / t as f64).clamp(0.0, 1.0) as f32)
    }

    /// Time left, extrapolated from the rate since progress started.
    pub fn eta(&self) -> Option<Duration> {
        let (d, t) = self.progress?;
        let (t0, d0) = self.progress_start?;
        if d <= d0 || d >= t {
            return None;
        }
        let rate = (d - d0) as f64 / t0.elapsed().as_secs_f64().max(1e-6);
        Some(Duration::from_secs_f64((t - d) as f64 / rate))
    }
}

/// "1 min 05 s", "12 s".
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}
