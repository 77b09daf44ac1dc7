//! The main window: menu bar, the steps panel (data, model, embed, UMAP, clusters,
//! fine-tune, annotate, export) on the left, the embedding / cells / training views in the
//! middle, the labels panel on the right and the job bar at the bottom. Every step runs as a
//! job off the UI thread (`jobs`); the UI thread only draws and routes commands.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cellforge_core::anndata::{AnnData, Element};
use cellforge_core::device::DeviceRequest;
use cellforge_core::tl::labels::{
    DatasetIdentity, Edit, LabelColumn, LabelSession, Source, UNLABELLED,
};
use cellforge_core::tl::plot::scatter_data;
use cellforge_core::train::History;
use egui::{Color32, RichText};

use super::jobs::{self, End, Failure, Job, JobKind, Output};
use super::scatter::{ScatterPoints, ScatterRenderer, ScatterView, Tool, scatter_ui};
use super::selection::Selection;
use super::work::{
    self, Dataset, EmbedSettings, FinetuneSettings, LabelsToWrite, ModelInfo, UmapSettings, WorkDir,
};
use crate::figure::{self, ColorBy, Colormap};

/// A step the app runs by itself at start-up (`cellforge --demo --run embed,umap`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartupStep {
    Open(PathBuf),
    Model(PathBuf),
    Embed,
    Umap,
    Leiden,
    Finetune,
    Annotate,
}

/// What to do at start-up, and whether to save a screenshot and quit afterwards.
#[derive(Clone, Debug, Default)]
pub struct Startup {
    pub steps: std::collections::VecDeque<StartupStep>,
    pub screenshot: Option<PathBuf>,
}

impl Startup {
    pub fn from_args(a: &crate::cli::Cli) -> anyhow::Result<Self> {
        let mut steps = std::collections::VecDeque::new();
        if a.demo {
            let data = super::demo_dataset_path().ok_or_else(|| {
                anyhow::anyhow!("the demo dataset is missing from this installation")
            })?;
            let model = super::demo_model_path().ok_or_else(|| {
                anyhow::anyhow!("the demo model is missing from this installation")
            })?;
            steps.push_back(StartupStep::Open(data));
            steps.push_back(StartupStep::Model(model));
        }
        if let Some(p) = &a.open {
            steps.push_back(StartupStep::Open(p.clone()));
        }
        if let Some(m) = &a.model {
            steps.push_back(StartupStep::Model(m.clone()));
        }
        for s in &a.run {
            steps.push_back(match s.trim() {
                "embed" => StartupStep::Embed,
                "umap" => StartupStep::Umap,
                "leiden" => StartupStep::Leiden,
                "finetune" => StartupStep::Finetune,
                "annotate" => StartupStep::Annotate,
                other => anyhow::bail!(
                    "--run: unknown step \"{other}\" (embed, umap, leiden, finetune, annotate)"
                ),
            });
        }
        Ok(Self {
            steps,
            screenshot: a.screenshot.clone(),
        })
    }
}

/// The central view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    Embedding,
    Cells,
    Training,
    Benchmark,
    Genes,
    Summary,
}

/// Settings kept between runs (eframe storage).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    pub recent: Vec<PathBuf>,
    pub light: bool,
    /// `auto`, `cuda`, `wgpu` or `cpu`.
    pub device: String,
}

const SETTINGS_KEY: &str = "cellforge-settings";

const WEIGHTS_HELP: &str = "The demo model that comes with cellforge was pretrained on 1,200 \
cells only; it is there so every step works out of the box. For real work, use a model the \
scGPT authors pretrained on millions of cells:\n\n\
1. Download a model folder from the scGPT model zoo (\"whole-human\", scGPT_human, is the \
usual choice; there are organ- and disease-specific ones too).\n\
2. Keep its three files together in one folder: args.json, vocab.json and best_model.pt.\n\
3. Open that folder here (Open a model folder… or File > Open a model folder), or pass \
--model FOLDER on the command line.\n\n\
cellforge reads only the tensors of best_model.pt; nothing in the file is executed. The Model \
panel then shows how many of your dataset's genes the model knows: gene symbols must match \
the vocabulary (HGNC symbols for the human models).";

/// Training loss per step and `(epoch, validation loss, accuracy)` per epoch.
type Curves = (
    Vec<[f64; 2]>,
    Vec<(String, Vec<[f64; 2]>)>,
    Vec<(usize, f64, Option<f64>)>,
);

/// A fine-tuned model made in this session.
pub struct Tuned {
    pub dir: PathBuf,
    pub classes: Vec<String>,
    pub history: Box<History>,
}

/// The label column being curated.
pub struct Labels {
    pub column: String,
    pub session: LabelSession,
    /// Edits applied (undo/redo move it), for provenance.
    pub edits: usize,
    /// Bumped on every change, to recolour.
    pub generation: u64,
}

/// How the scatter is coloured now.
enum Coloring {
    Categorical {
        key: String,
        names: Vec<String>,
        colors: Vec<[u8; 4]>,
        counts: Vec<usize>,
        codes: Vec<i32>,
        /// Mean of `obs[<key>_confidence]` per category, when the column has one.
        confidence: Option<Vec<f64>>,
    },
    Continuous {
        key: String,
        min: f32,
        max: f32,
        cmap: Colormap,
    },
    Plain,
}

/// The cellforge desktop application.
pub struct CellforgeApp {
    ctx: egui::Context,
    dataset: Option<Dataset>,
    model: Option<ModelInfo>,
    /// `((data version, model folder), genes matched, dataset genes)` for the Model panel.
    genes_matched: Option<((u64, PathBuf), usize, usize)>,
    tuned: Option<Tuned>,
    work: Option<WorkDir>,
    work_root: Option<PathBuf>,
    job: Option<Job>,
    /// The last finished job's log and curves, shown after it ends.
    last_job: Option<Job>,
    /// Loss per step and validation per epoch of the last fine-tune that finished.
    tuned_curves: Option<Curves>,
    error: Option<Failure>,
    notice: Option<String>,
    tab: Tab,
    settings: Settings,
    device_status: Arc<Mutex<Option<String>>>,

    pub embed: EmbedSettings,
    pub umap: UmapSettings,
    pub leiden_resolution: f64,
    pub finetune: FinetuneSettings,
    pub min_confidence: f64,
    pub export_path: String,
    pub export_replace: bool,
    /// Resolution of PNG figures.
    pub figure_dpi: f32,

    scatter: ScatterView,
    points: Option<Arc<ScatterPoints>>,
    basis: String,
    color_key: String,
    coloring: Coloring,
    /// (dataset version, basis, colour key, labels generation) the points were built for.
    points_key: (u64, String, String, u64),

    labels: Option<Labels>,
    pub new_label: String,
    pub rename_to: String,
    /// The column the user picked to curate (default: the one coloured by).
    edit_column: Option<String>,
    rename_from: String,

    startup: Startup,
    frames: u64,
    show_weights_help: bool,
    /// Frames waited after start-up before the screenshot is requested.
    screenshot_wait: u32,
    pub preprocess: work::PreprocessSettings,
    pub map_reference: String,
    pub map_label_key: String,
    pub map_k: usize,
    pub programs_resolution: f64,
    pub programs_threshold: f32,
    network: Option<(u64, super::network::GeneNetwork)>,
    markers: Option<(usize, Vec<String>)>,
    net_view: ScatterView,
    net_points: Option<Arc<ScatterPoints>>,
    pub net_threshold: f32,
    pub gene_query: String,
    /// The gene typed in the embedding toolbar ("Colour by" a gene).
    pub gene_color: String,
    /// Name of a new label column to start (Labels panel).
    pub new_column: String,
    pub bench_truth: String,
    pub bench_predicted: String,
    pub bench_batch: String,
    comparison: Option<Result<super::bench::Comparison, String>>,
    integration: Option<(
        String,
        Box<cellforge_core::analysis::integration::IntegrationMetrics>,
    )>,
    table_filter: String,
    table_sort: Option<(usize, bool)>,
    table: Option<(u64, Vec<String>, Vec<Vec<String>>)>,
}

impl CellforgeApp {
    pub fn new(ctx: egui::Context) -> Self {
        let device_status = Arc::new(Mutex::new(None));
        probe_device(device_status.clone(), ctx.clone());
        Self {
            ctx,
            dataset: None,
            model: None,
            genes_matched: None,
            tuned: None,
            work: None,
            work_root: None,
            job: None,
            last_job: None,
            tuned_curves: None,
            error: None,
            notice: None,
            tab: Tab::Embedding,
            settings: Settings::default(),
            device_status,
            embed: EmbedSettings::default(),
            umap: UmapSettings::default(),
            leiden_resolution: 1.0,
            finetune: FinetuneSettings::default(),
            min_confidence: 0.0,
            export_path: String::new(),
            export_replace: false,
            figure_dpi: 300.0,
            scatter: ScatterView::new(),
            points: None,
            basis: String::new(),
            color_key: String::new(),
            coloring: Coloring::Plain,
            points_key: (u64::MAX, String::new(), String::new(), 0),
            labels: None,
            new_label: String::new(),
            rename_to: String::new(),
            edit_column: None,
            rename_from: String::new(),
            startup: Startup::default(),
            frames: 0,
            show_weights_help: false,
            screenshot_wait: 0,
            preprocess: work::PreprocessSettings::default(),
            map_reference: String::new(),
            map_label_key: "cell_type".into(),
            map_k: 10,
            programs_resolution: 40.0,
            programs_threshold: 0.5,
            network: None,
            markers: None,
            net_view: {
                let mut v = ScatterView::new();
                v.label = "Gene network".into();
                v.point_radius = 4.0;
                v
            },
            net_points: None,
            net_threshold: 0.5,
            gene_query: String::new(),
            gene_color: String::new(),
            new_column: String::new(),
            bench_truth: String::new(),
            bench_predicted: String::new(),
            bench_batch: String::new(),
            comparison: None,
            integration: None,
            table_filter: String::new(),
            table_sort: None,
            table: None,
        }
    }

    /// The app as eframe starts it: GPU scatter renderer installed on eframe's wgpu device,
    /// settings restored.
    pub fn from_creation_context(cc: &eframe::CreationContext<'_>) -> Self {
        if let Some(rs) = cc.wgpu_render_state.as_ref() {
            ScatterRenderer::install(rs);
        }
        let mut app = Self::new(cc.egui_ctx.clone());
        if let Some(s) = cc
            .storage
            .and_then(|s| eframe::get_value::<Settings>(s, SETTINGS_KEY))
        {
            app.settings = s;
        }
        app.apply_theme();
        app
    }

    fn apply_theme(&self) {
        self.ctx.set_theme(if self.settings.light {
            egui::Theme::Light
        } else {
            egui::Theme::Dark
        });
    }

    fn device(&self) -> DeviceRequest {
        self.settings.device.parse().unwrap_or(DeviceRequest::Auto)
    }

    // ----- queries used by tests and the UI -----

    /// True while a job (reading, embedding, training, ...) is running.
    pub fn is_busy(&self) -> bool {
        self.job.is_some()
    }

    /// Kept for the loader-era tests: true while a file is being read.
    pub fn is_loading(&self) -> bool {
        self.job.as_ref().is_some_and(|j| j.kind == JobKind::Load)
    }

    pub fn dataset(&self) -> Option<&AnnData> {
        self.dataset.as_ref().map(|d| d.adata.as_ref())
    }

    pub fn last_error(&self) -> Option<&Failure> {
        self.error.as_ref()
    }

    pub fn labels(&self) -> Option<&LabelSession> {
        self.labels.as_ref().map(|l| &l.session)
    }

    pub fn scatter(&self) -> &ScatterView {
        &self.scatter
    }

    pub fn scatter_mut(&mut self) -> &mut ScatterView {
        &mut self.scatter
    }

    /// True once the scatter can answer lasso/box selections.
    pub fn scatter_ready(&mut self) -> bool {
        self.points.is_some() && self.scatter.index().is_some()
    }

    /// True once Cancel was pressed on the running job (until it ends).
    pub fn is_cancelling(&self) -> bool {
        self.job.as_ref().is_some_and(|j| j.is_cancelling())
    }

    /// `(done, total)` of the running job, when it reports progress.
    pub fn job_progress(&self) -> Option<(u64, u64)> {
        self.job.as_ref().and_then(|j| j.progress)
    }

    /// Cell types of the model fine-tuned in this session.
    pub fn tuned_classes(&self) -> Option<&[String]> {
        self.tuned.as_ref().map(|t| t.classes.as_slice())
    }

    /// The obs column or gene the embedding is coloured by.
    pub fn color_key(&self) -> &str {
        &self.color_key
    }

    pub fn basis(&self) -> &str {
        &self.basis
    }

    /// Steps to run by themselves once the window is up.
    pub fn set_startup(&mut self, startup: Startup) {
        self.startup = startup;
    }

    /// Runs the next start-up step when nothing else runs; saves the screenshot at the end.
    fn drive_startup(&mut self, ctx: &egui::Context) {
        if self.job.is_some() {
            return;
        }
        if self.error.is_some()
            && (!self.startup.steps.is_empty() || self.startup.screenshot.is_some())
        {
            if let Some(e) = &self.error {
                eprintln!("start-up stopped: {} ({})", e.title, e.detail);
            }
            self.startup.steps.clear();
        }
        if let Some(step) = self.startup.steps.pop_front() {
            match step {
                StartupStep::Open(p) => self.open(p),
                StartupStep::Model(m) => self.open_model(m),
                StartupStep::Embed => self.run_embed(),
                StartupStep::Umap => self.run_umap(),
                StartupStep::Leiden => self.run_leiden(),
                StartupStep::Finetune => self.run_finetune(),
                StartupStep::Annotate => self.run_annotate(),
            }
            return;
        }
        let Some(path) = self.startup.screenshot.clone() else {
            return;
        };
        let shot = ctx.input(|i| {
            i.raw.events.iter().find_map(|e| match e {
                egui::Event::Screenshot { image, .. } => Some(image.clone()),
                _ => None,
            })
        });
        if let Some(image) = shot {
            match save_png(&path, &image) {
                Ok(()) => eprintln!("screenshot saved to {}", path.display()),
                Err(e) => eprintln!("could not save the screenshot: {e}"),
            }
            self.startup.screenshot = None;
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        // Let the last result settle on screen (index, layout) before capturing.
        self.screenshot_wait += 1;
        if self.screenshot_wait == 30 {
            ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(Default::default()));
        }
        ctx.request_repaint();
    }

    /// Where session folders (working files, journals, fine-tuned models) are made.
    pub fn set_work_root(&mut self, root: PathBuf) {
        self.work_root = Some(root);
    }

    pub fn session_dir(&self) -> Option<&Path> {
        self.work.as_ref().map(|w| w.path.as_path())
    }

    // ----- opening -----

    /// Starts reading `path` in the background.
    pub fn open(&mut self, path: PathBuf) {
        if self.job.is_some() {
            self.error = Some(Failure::new(
                "Wait for the running job to finish (or cancel it) before opening another file",
                path.display(),
            ));
            return;
        }
        let p = path.clone();
        self.job = Some(jobs::spawn(JobKind::Load, &self.ctx, move |r| {
            let (adata, summary, warnings) = work::open(&p, r)?;
            Ok(Output::Opened {
                adata: Box::new(adata),
                path: p,
                summary,
                warnings,
            })
        }));
    }

    fn open_dialog(&mut self) {
        if let Some(path) = rfd::FileDialog::new()
            .add_filter("AnnData", &["h5ad"])
            .pick_file()
        {
            self.open(path);
        }
    }

    fn open_demo(&mut self) {
        match super::demo_dataset_path() {
            Some(p) => self.open(p),
            None => {
                self.error = Some(Failure::new(
                    "The demo dataset is missing from this installation.",
                    "looked next to the executable (assets/demo) and in the source tree",
                ))
            }
        }
    }

    /// Opens a model folder (scGPT release or cellforge model).
    pub fn open_model(&mut self, dir: PathBuf) {
        if self.job.is_some() {
            return;
        }
        self.job = Some(jobs::spawn(JobKind::Load, &self.ctx, move |r| {
            r.stage(format!("Reading the model in {}", dir.display()));
            Ok(Output::OpenedModel(Box::new(work::open_model(&dir)?)))
        }));
    }

    fn open_demo_model(&mut self) {
        match super::demo_model_path() {
            Some(p) => self.open_model(p),
            None => {
                self.error = Some(Failure::new(
                    "The demo model is missing from this installation.",
                    "looked next to the executable (assets/demo/model) and in the source tree",
                ))
            }
        }
    }

    // ----- jobs -----

    fn start(
        &mut self,
        kind: JobKind,
        work: impl FnOnce(&jobs::Reporter) -> Result<Output, Failure> + Send + 'static,
    ) {
        if self.job.is_some() {
            return;
        }
        self.error = None;
        self.notice = None;
        self.job = Some(jobs::spawn(kind, &self.ctx, work));
    }

    fn next_path(&mut self, stem: &str, ext: &str) -> Option<PathBuf> {
        if self.work.is_none() {
            match WorkDir::create(self.work_root.as_deref()) {
                Ok(w) => self.work = Some(w),
                Err(e) => {
                    self.error = Some(Failure::new(
                        "Could not create a working folder for this session",
                        e,
                    ));
                    return None;
                }
            }
        }
        self.work.as_mut().map(|w| w.next(stem, ext))
    }

    /// Embeds every cell with the open model (obsm `X_scGPT`).
    pub fn run_embed(&mut self) {
        let (Some(d), Some(m)) = (&self.dataset, &self.model) else {
            return;
        };
        let (input, model) = (d.current.clone(), m.dir.clone());
        let Some(out) = self.next_path("embedded", "h5ad") else {
            return;
        };
        let (dev, s) = (self.device(), self.embed.clone());
        self.start(JobKind::Embed, move |r| {
            work::embed(input, model, out, dev, s, r)
        });
    }

    /// scGPT's preprocessing into layers (cells and genes kept).
    pub fn run_preprocess(&mut self) {
        let Some(d) = &self.dataset else { return };
        let input = d.current.clone();
        let Some(out) = self.next_path("preprocessed", "h5ad") else {
            return;
        };
        let s = self.preprocess.clone();
        self.start(JobKind::Preprocess, move |r| {
            work::preprocess(input, out, s, r)
        });
    }

    /// Labels from a reference dataset by similarity in the model's embedding.
    pub fn run_map(&mut self) {
        let (Some(d), Some(m)) = (&self.dataset, &self.model) else {
            return;
        };
        let reference = PathBuf::from(self.map_reference.trim());
        if !reference.is_file() {
            self.error = Some(Failure::new(
                "Pick the reference .h5ad to map from",
                reference.display(),
            ));
            return;
        }
        let (query, model) = (d.current.clone(), m.dir.clone());
        let Some(out) = self.next_path("mapped", "h5ad") else {
            return;
        };
        let (key, k, dev) = (self.map_label_key.clone(), self.map_k, self.device());
        self.start(JobKind::Map, move |r| {
            work::map(query, reference, key, model, out, dev, k, r)
        });
    }

    /// Gene programs and the gene similarity network from the model.
    pub fn run_gene_programs(&mut self) {
        let (Some(d), Some(m)) = (&self.dataset, &self.model) else {
            return;
        };
        let (input, model) = (d.current.clone(), m.dir.clone());
        let Some(out) = self.next_path("gene-programs", "h5ad") else {
            return;
        };
        let (res, thr, dev) = (
            self.programs_resolution,
            self.programs_threshold,
            self.device(),
        );
        self.start(JobKind::Programs, move |r| {
            work::gene_programs(input, model, out, dev, res, thr, r)
        });
    }

    /// Lays out the gene network of the current data.
    pub fn run_network_layout(&mut self) {
        let Some(d) = &self.dataset else { return };
        let adata = d.adata.clone();
        self.start(JobKind::Network, move |r| {
            r.stage("UMAP of the gene similarity graph");
            super::network::build(&adata, 0)
                .map(|n| Output::Network(Box::new(n)))
                .map_err(|e| Failure::new("Could not lay out the gene network", e))
        });
    }

    /// Marker genes of the current selection against the other cells.
    pub fn run_markers(&mut self) {
        let Some(d) = &self.dataset else { return };
        let adata = d.adata.clone();
        let cells = self.scatter.selection().to_vec();
        self.start(JobKind::Markers, move |r| work::markers(adata, cells, r));
    }

    /// The last marker genes found: (cells, genes best first).
    pub fn markers(&self) -> Option<&(usize, Vec<String>)> {
        self.markers.as_ref()
    }

    /// The laid-out gene network, when there is one.
    pub fn network(&self) -> Option<&super::network::GeneNetwork> {
        self.network.as_ref().map(|n| &n.1)
    }

    /// Neighbours and UMAP on the chosen representation.
    pub fn run_umap(&mut self) {
        let Some(d) = &self.dataset else { return };
        let adata = d.adata.clone();
        let Some(out) = self.next_path("umap", "h5ad") else {
            return;
        };
        let s = self.umap.clone();
        self.start(JobKind::Umap, move |r| work::umap(adata, out, s, r));
    }

    pub fn run_leiden(&mut self) {
        let Some(d) = &self.dataset else { return };
        let adata = d.adata.clone();
        let Some(out) = self.next_path("leiden", "h5ad") else {
            return;
        };
        let (res, rep) = (self.leiden_resolution, self.umap.use_rep.clone());
        self.start(JobKind::Leiden, move |r| {
            work::leiden(adata, out, res, rep, r)
        });
    }

    pub fn run_finetune(&mut self) {
        let (Some(d), Some(m)) = (&self.dataset, &self.model) else {
            return;
        };
        if let Some(p) = self.finetune.problem() {
            self.error = Some(Failure::new(p, "the fine-tuning form is incomplete"));
            return;
        }
        let (reference, model) = (d.current.clone(), m.dir.clone());
        let Some(out) = self.next_path("finetuned-model", "") else {
            return;
        };
        let (dev, s) = (self.device(), self.finetune.clone());
        self.start(JobKind::Finetune, move |r| {
            work::finetune(reference, model, out, dev, s, r)
        });
    }

    /// Predicts cell types with the fine-tuned model (or an opened model with a classifier).
    pub fn run_annotate(&mut self) {
        let Some(d) = &self.dataset else { return };
        let model = match (&self.tuned, &self.model) {
            (Some(t), _) => t.dir.clone(),
            (None, Some(m)) if !m.classes.is_empty() => m.dir.clone(),
            _ => return,
        };
        let query = d.current.clone();
        let Some(out) = self.next_path("annotated", "h5ad") else {
            return;
        };
        let (dev, c) = (self.device(), self.min_confidence);
        self.start(JobKind::Annotate, move |r| {
            work::annotate(query, model, out, dev, c, r)
        });
    }

    /// Writes the annotated file to `export_path`.
    pub fn run_export(&mut self) {
        let Some(d) = &self.dataset else { return };
        let path = PathBuf::from(self.export_path.trim());
        if self.export_path.trim().is_empty() {
            self.error = Some(Failure::new("Type where to save the file", "no path given"));
            return;
        }
        if path.exists() && !self.export_replace {
            self.error = Some(Failure::new(
                "A file with that name exists; tick \"Replace the existing file\" to overwrite it",
                path.display(),
            ));
            return;
        }
        let labels = self
            .labels
            .as_ref()
            .map(|l| LabelsToWrite::from_session(&l.column, &l.session, l.edits));
        let (adata, steps, source) = (d.adata.clone(), d.steps.clone(), d.source.clone());
        self.start(JobKind::Export, move |r| {
            work::export(adata, labels, steps, source, path, r)
        });
    }

    /// Writes the scatter as a figure (PNG at 300 dpi, or SVG by extension).
    pub fn export_figure(&mut self, path: PathBuf) {
        let Some(d) = &self.dataset else { return };
        let adata = d.adata.clone();
        let (basis, key) = (self.basis.clone(), self.color_key.clone());
        let dpi = self.figure_dpi;
        let labels = self.labels.as_ref().and_then(|l| {
            (l.column == key).then(|| {
                let c = l.session.column();
                (c.codes().to_vec(), c.categories().to_vec())
            })
        });
        self.start(JobKind::Export, move |r| {
            r.stage("Drawing the figure");
            let data = scatter_data(
                &adata,
                &basis,
                (!key.is_empty() && labels.is_none()).then_some(key.as_str()),
                None,
                (0, 1),
            )
            .map_err(|e| Failure::new("Could not draw the figure", e))?;
            let n = data.points.len();
            let (colors, title) = match labels {
                Some((codes, names)) => (ColorBy::categorical(codes, names), key.clone()),
                None => figure::color_by(data.color, n, Colormap::Viridis),
            };
            let mut fig = figure::ScatterFigure::new(data.points, colors);
            fig.x_label = data.x_label;
            fig.y_label = data.y_label;
            fig.title = title;
            let svg = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
            let bytes = if svg {
                figure::render_svg(&fig, 6.0, 4.5).into_bytes()
            } else {
                figure::render_png(&fig, 6.0, 4.5, dpi)
                    .map_err(|e| Failure::new("Could not draw the figure", e))?
            };
            figure::write_atomic(&path, &bytes)
                .map_err(|e| Failure::new("Could not write the figure", e))?;
            Ok(Output::Exported {
                message: format!("Saved {}", path.display()),
                path,
            })
        });
    }

    /// Writes a figure as `<base>.png` (300 dpi) and `<base>.svg`, next to the export path.
    fn save_figure(&mut self, sketch: &figure::sketch::Sketch, suffix: &str) {
        let base = Path::new(self.export_path.trim()).with_extension("");
        let stem = format!("{}_{suffix}", base.display());
        let png = match sketch.to_png(self.figure_dpi) {
            Ok(b) => b,
            Err(e) => {
                self.error = Some(Failure::new("Could not draw the figure", e));
                return;
            }
        };
        for (path, bytes) in [
            (format!("{stem}.png"), png),
            (format!("{stem}.svg"), sketch.to_svg().into_bytes()),
        ] {
            if let Err(e) = figure::write_atomic(&path, &bytes) {
                self.error = Some(Failure::new(format!("Could not write {path}"), e));
                return;
            }
        }
        self.notice = Some(format!("Saved {stem}.png and {stem}.svg"));
    }

    fn poll_job(&mut self) {
        let Some(job) = self.job.as_mut() else { return };
        let Some(end) = job.poll() else { return };
        let job = self.job.take();
        match end {
            End::Cancelled => {
                self.notice = Some(format!(
                    "{} was cancelled; nothing was changed.",
                    job.as_ref().map_or("The job", |j| j.title())
                ));
            }
            End::Failed(f) => self.error = Some(f),
            End::Done(out) => {
                if let Some(j) = job.as_ref().filter(|j| j.kind == JobKind::Finetune) {
                    self.tuned_curves = Some((j.losses.clone(), j.terms.clone(), j.valid.clone()));
                }
                self.accept(out);
                if job.as_ref().is_some_and(|j| j.kind == JobKind::Programs) {
                    self.tab = Tab::Genes;
                    self.network = None;
                    if let Some(j) = job {
                        self.last_job = Some(j);
                    }
                    self.run_network_layout();
                    return;
                }
            }
        }
        if let Some(j) = job
            && j.kind != JobKind::Load
        {
            self.last_job = Some(j);
        }
    }

    fn accept(&mut self, out: Output) {
        match out {
            Output::Opened {
                adata,
                path,
                summary,
                warnings,
            } => {
                self.remember_recent(&path);
                let adata: Arc<AnnData> = Arc::from(adata);
                self.export_path = default_export_path(&path).display().to_string();
                self.export_replace = false;
                self.dataset = Some(Dataset {
                    source: path.clone(),
                    current: path,
                    adata,
                    summary,
                    warnings,
                    steps: Vec::new(),
                    version: next_version(),
                });
                // A new session folder, unless the file was opened from the current one
                // (its working copies go when the folder's session ends).
                if !self
                    .work
                    .as_ref()
                    .is_some_and(|w| self.dataset_source_in(&w.path))
                {
                    self.work = None;
                }
                self.labels = None;
                self.tuned = None;
                self.tuned_curves = None;
                self.comparison = None;
                self.integration = None;
                self.network = None;
                self.markers = None;
                self.table = None;
                self.scatter.clear_selection();
                self.basis.clear();
                self.color_key.clear();
                self.choose_view_defaults();
                self.finetune_defaults();
                self.tab = Tab::Embedding;
            }
            Output::OpenedModel(info) => {
                if info.max_seq_len > 1 {
                    let cap = TrainDefaults::max_len_for(info.max_seq_len);
                    self.finetune.max_len = cap;
                    self.embed.max_length = cap.min(self.embed.max_length).max(2);
                }
                self.notice = Some(format!("Model ready: {}", info.dir.display()));
                self.model = Some(*info);
            }
            Output::Dataset {
                adata,
                path,
                message,
            } => {
                let Some(d) = self.dataset.as_mut() else {
                    return;
                };
                if adata.n_obs() != d.adata.n_obs() {
                    self.error = Some(Failure::new(
                        "The result does not match the open dataset; it was not applied",
                        format!("{} cells instead of {}", adata.n_obs(), d.adata.n_obs()),
                    ));
                    return;
                }
                d.adata = Arc::from(adata);
                d.current = path;
                d.steps.push(message.clone());
                d.version = next_version();
                self.table = None;
                self.notice = Some(message);
                self.choose_view_defaults();
            }
            Output::Model {
                dir,
                message,
                history,
                classes,
            } => {
                self.tuned = Some(Tuned {
                    dir,
                    classes,
                    history,
                });
                if let Some(d) = self.dataset.as_mut() {
                    d.steps.push(message.clone());
                }
                self.notice = Some(message);
            }
            Output::Exported { message, .. } => self.notice = Some(message),
            Output::Markers { n_cells, genes } => {
                self.notice = Some(format!(
                    "Marker genes of {} selected cells: {}",
                    n_cells,
                    genes.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                ));
                self.markers = Some((n_cells, genes));
            }
            Output::Network(net) => {
                let version = self.dataset.as_ref().map_or(0, |d| d.version);
                self.net_threshold = net.default_threshold();
                self.net_points = Some(Arc::new(ScatterPoints::new(
                    net.positions.clone(),
                    super::network::node_colors(&net),
                )));
                self.net_view.fit();
                self.net_view.clear_selection();
                self.notice = Some(format!(
                    "Gene network: {} genes, {} programs, {} edges",
                    net.genes.len(),
                    net.program_names.len(),
                    net.edges.len()
                ));
                self.network = Some((version, *net));
            }
            Output::Metrics {
                metrics,
                description,
            } => {
                self.notice = Some(format!("Integration metrics of {description}"));
                self.integration = Some((description, metrics));
            }
        }
    }

    fn dataset_source_in(&self, dir: &Path) -> bool {
        self.dataset
            .as_ref()
            .is_some_and(|d| d.source.starts_with(dir))
    }

    fn remember_recent(&mut self, path: &Path) {
        let r = &mut self.settings.recent;
        r.retain(|p| p != path);
        r.insert(0, path.to_path_buf());
        r.truncate(8);
    }

    /// After data changes: show UMAP when there is one, colour by the newest predictions or
    /// the first label-like column.
    fn choose_view_defaults(&mut self) {
        let Some(d) = &self.dataset else { return };
        let a = &d.adata;
        let bases = embeddings(a);
        if !bases.contains(&self.basis) || (self.basis != "X_umap" && a.obsm.contains_key("X_umap"))
        {
            self.basis = ["X_umap", "X_tsne", "X_pca", "X_scGPT"]
                .iter()
                .map(|s| s.to_string())
                .find(|b| bases.contains(b))
                .or_else(|| bases.first().cloned())
                .unwrap_or_default();
            self.scatter.fit();
        }
        let has_pred = a.obs.column("predicted_cell_type").is_some();
        if has_pred
            && self.color_key != "predicted_cell_type"
            && !d.steps.is_empty()
            && d.steps.last().is_some_and(|s| s.starts_with("Annotated"))
        {
            self.color_key = "predicted_cell_type".into();
        }
        if self.color_key.is_empty() || a.obs.column(&self.color_key).is_none() {
            self.color_key = categorical_columns(a)
                .into_iter()
                .find(|c| c.contains("cell_type") || c.contains("celltype"))
                .or_else(|| categorical_columns(a).into_iter().next())
                .unwrap_or_default();
        }
    }

    fn finetune_defaults(&mut self) {
        let Some(d) = &self.dataset else { return };
        let cats = categorical_columns(&d.adata);
        if !cats.contains(&self.finetune.label_key) {
            self.finetune.label_key = cats
                .iter()
                .find(|c| c.contains("cell_type") || c.contains("celltype"))
                .cloned()
                .unwrap_or_default();
        }
        if !self.finetune.batch_key.is_empty() && !cats.contains(&self.finetune.batch_key) {
            self.finetune.batch_key.clear();
        }
    }

    // ----- labels -----

    /// Starts curating `column` (an existing obs column, or a new one starting empty). The
    /// session is journaled in the session folder at once.
    pub fn edit_labels(&mut self, column: &str) {
        let Some(d) = &self.dataset else { return };
        let a = &d.adata;
        let name = column.trim();
        if name.is_empty() {
            return;
        }
        let (col, source, meta) = match a.obs.categorical(name) {
            Ok(c) => {
                let labels: Vec<Option<String>> = c.labels();
                let col = match LabelColumn::from_labels(&labels) {
                    Ok(c) => c,
                    Err(e) => {
                        self.error = Some(Failure::new(
                            format!("The column {name} cannot be edited as labels"),
                            e,
                        ));
                        return;
                    }
                };
                let (prov, task) = match provenance_of(a, name) {
                    Some((p, t)) => (Some(p), Some(t)),
                    None => (None, None),
                };
                let source = match task.as_deref() {
                    Some("map") => Source::Mapped,
                    Some(_) => Source::Model,
                    None => Source::Original,
                };
                (col, source, prov)
            }
            Err(_) => match LabelColumn::unlabelled(a.n_obs()) {
                Ok(c) => (c, Source::Manual, None),
                Err(e) => {
                    self.error = Some(Failure::new("Could not start a label column", e));
                    return;
                }
            },
        };
        let mut session = LabelSession::with_source(col, source, meta);
        let identity = DatasetIdentity {
            path: d.source.display().to_string(),
            n_cells: a.n_obs() as u64,
            fingerprint: fingerprint(a),
            label_column: name.to_string(),
        };
        let stem: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        if let Some(path) = self.next_path(&format!("labels-{stem}"), "journal")
            && let Err(e) = session.start_journal(&path, identity)
        {
            self.error = Some(Failure::new(
                "Could not start the edit journal; edits would not survive a crash",
                e,
            ));
            return;
        }
        self.labels = Some(Labels {
            column: name.to_string(),
            session,
            edits: 0,
            generation: next_version(),
        });
        self.color_key = name.to_string();
    }

    /// Gives the selected cells the label typed in the label field.
    pub fn assign_selection(&mut self) {
        let label = self.new_label.trim().to_string();
        let cells = self.scatter.selection().to_vec();
        if label.is_empty() || cells.is_empty() {
            return;
        }
        self.apply_edit(Edit::Assign { cells, label });
    }

    fn apply_edit(&mut self, edit: Edit) {
        let Some(l) = self.labels.as_mut() else {
            return;
        };
        match l.session.apply(edit) {
            Ok(s) => {
                l.edits += 1;
                l.generation = next_version();
                self.notice = Some(format!("{} cells relabelled", s.cells_changed));
            }
            Err(e) => self.error = Some(Failure::new("The edit was not applied", e)),
        }
    }

    pub fn undo(&mut self) {
        let Some(l) = self.labels.as_mut() else {
            return;
        };
        match l.session.undo() {
            Ok(Some(_)) => {
                l.edits = l.edits.saturating_sub(1);
                l.generation = next_version();
                self.notice = Some("Undone".into());
            }
            Ok(None) => {}
            Err(e) => self.error = Some(Failure::new("Could not undo", e)),
        }
    }

    pub fn redo(&mut self) {
        let Some(l) = self.labels.as_mut() else {
            return;
        };
        match l.session.redo() {
            Ok(Some(_)) => {
                l.edits += 1;
                l.generation = next_version();
                self.notice = Some("Redone".into());
            }
            Ok(None) => {}
            Err(e) => self.error = Some(Failure::new("Could not redo", e)),
        }
    }

    // ----- scatter -----

    fn refresh_points(&mut self) {
        let Some(d) = &self.dataset else {
            self.points = None;
            return;
        };
        let label_gen = self
            .labels
            .as_ref()
            .filter(|l| l.column == self.color_key)
            .map_or(0, |l| l.generation);
        let key = (
            d.version,
            self.basis.clone(),
            self.color_key.clone(),
            label_gen,
        );
        if key == self.points_key {
            return;
        }
        self.points_key = key;
        if self.basis.is_empty() {
            self.points = None;
            return;
        }
        let from_labels = self.labels.as_ref().filter(|l| l.column == self.color_key);
        let color = (!self.color_key.is_empty() && from_labels.is_none())
            .then_some(self.color_key.as_str());
        let data = match scatter_data(&d.adata, &self.basis, color, None, (0, 1)) {
            Ok(x) => x,
            Err(e) => {
                self.error = Some(Failure::new(
                    format!("Cannot draw {} coloured by {}", self.basis, self.color_key),
                    e,
                ));
                self.points = None;
                return;
            }
        };
        let n = data.points.len();
        let colorby = match from_labels {
            Some(l) => {
                let c = l.session.column();
                ColorBy::categorical(c.codes().to_vec(), c.categories().to_vec())
            }
            None => figure::color_by(data.color, n, Colormap::Viridis).0,
        };
        let (colors, mut coloring) = point_colors(&colorby, &self.color_key, n);
        if let Coloring::Categorical {
            codes,
            names,
            confidence,
            ..
        } = &mut coloring
            && let Some(Element::Dense(c)) = d
                .adata
                .obs
                .column(&format!("{}_confidence", self.color_key))
        {
            let mut sum = vec![0.0f64; names.len()];
            let mut cnt = vec![0usize; names.len()];
            for (i, &k) in codes.iter().enumerate() {
                if let (Ok(k), Some(v)) = (usize::try_from(k), c.data.get_f64(i))
                    && k < names.len()
                    && v.is_finite()
                {
                    sum[k] += v;
                    cnt[k] += 1;
                }
            }
            *confidence = Some(
                sum.iter()
                    .zip(&cnt)
                    .map(|(s, &c)| if c > 0 { s / c as f64 } else { f64::NAN })
                    .collect(),
            );
        }
        self.coloring = coloring;
        let positions = data.points;
        match &mut self.points {
            Some(p) if p.len() == n && p.positions() == positions.as_slice() => {
                Arc::make_mut(p).set_colors(colors);
            }
            _ => {
                self.points = Some(Arc::new(ScatterPoints::new(positions, colors)));
            }
        }
    }
}

/// Fine-tuning length defaults from the model's pretraining length.
struct TrainDefaults;
impl TrainDefaults {
    /// The model's pretraining length, at most scGPT's 3,001-token annotation recipe.
    fn max_len_for(model_max: usize) -> usize {
        model_max.clamp(2, 3001)
    }
}

fn next_version() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static V: AtomicU64 = AtomicU64::new(1);
    V.fetch_add(1, Ordering::Relaxed)
}

fn probe_device(out: Arc<Mutex<Option<String>>>, ctx: egui::Context) {
    let _ = std::thread::Builder::new()
        .name("device-probe".into())
        .spawn(move || {
            let s = match cellforge_core::device::choose(DeviceRequest::Auto) {
                Ok(c) => c.to_string(),
                Err(e) => format!("no compute device: {e}"),
            };
            if let Ok(mut g) = out.lock() {
                *g = Some(s);
            }
            ctx.request_repaint();
        });
}

/// `<dir>/<stem>_annotated.h5ad` next to the opened file.
pub fn default_export_path(source: &Path) -> PathBuf {
    let stem = source
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    source.with_file_name(format!("{stem}_annotated.h5ad"))
}

fn fingerprint(a: &AnnData) -> String {
    // FNV-1a over the cell names and the shape: enough to recognise the dataset again.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&(a.n_obs() as u64).to_le_bytes());
    eat(&(a.n_vars() as u64).to_le_bytes());
    for n in a.obs_names() {
        eat(n.as_bytes());
        eat(&[0]);
    }
    format!("fnv1a64:{h:016x}")
}

/// Model and threshold recorded by `annotate` or `map` for a predicted column, as JSON, and
/// which of the two made it (`uns["cellforge"]["<task>_<column>"]`).
fn provenance_of(a: &AnnData, column: &str) -> Option<(serde_json::Value, String)> {
    let Element::Mapping(root) = a.uns.get("cellforge")? else {
        return None;
    };
    let (task, rec) = root.iter().find_map(|(k, v)| {
        let task = k.strip_suffix(&format!("_{column}"))?;
        match v {
            Element::Mapping(m) if task == "annotate" || task == "map" => {
                Some((task.to_string(), m))
            }
            _ => None,
        }
    })?;
    let mut obj = serde_json::Map::new();
    for (k, v) in rec {
        let val = match v {
            Element::String(s) => serde_json::Value::String(s.clone()),
            Element::Scalar(x) => x
                .data
                .get_f64(0)
                .and_then(serde_json::Number::from_f64)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            _ => continue,
        };
        obj.insert(k.clone(), val);
    }
    obj.insert("task".into(), serde_json::Value::String(task.clone()));
    Some((serde_json::Value::Object(obj), task))
}

/// obsm keys with at least two columns.
fn embeddings(a: &AnnData) -> Vec<String> {
    a.obsm
        .iter()
        .filter(|(_, e)| match e {
            Element::Dense(d) => d.shape.len() == 2 && d.shape[1] >= 2,
            _ => false,
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// obs columns that read as labels (categoricals and strings).
fn categorical_columns(a: &AnnData) -> Vec<String> {
    a.obs
        .columns
        .iter()
        .filter(|(_, e)| {
            matches!(
                e,
                Element::Categorical(_) | Element::Strings(_) | Element::NullableString { .. }
            )
        })
        .map(|(n, _)| n.clone())
        .collect()
}

/// Columns one can colour by: every 1-D obs column.
fn colorable_columns(a: &AnnData) -> Vec<String> {
    a.obs
        .columns
        .iter()
        .filter(|(_, e)| match e {
            Element::Dense(d) => d.shape.len() == 1,
            Element::Categorical(_)
            | Element::Strings(_)
            | Element::NullableString { .. }
            | Element::NullableInteger { .. }
            | Element::NullableBoolean { .. } => true,
            _ => false,
        })
        .map(|(n, _)| n.clone())
        .collect()
}

fn point_colors(c: &ColorBy, key: &str, n: usize) -> (Vec<[u8; 4]>, Coloring) {
    match c {
        ColorBy::Categorical {
            codes,
            names,
            colors,
        } => {
            let mut counts = vec![0usize; names.len()];
            let cols = codes
                .iter()
                .map(
                    |&k| match usize::try_from(k).ok().filter(|&k| k < names.len()) {
                        Some(k) => {
                            counts[k] += 1;
                            colors.get(k).copied().unwrap_or(figure::NA_COLOR)
                        }
                        None => figure::NA_COLOR,
                    },
                )
                .collect();
            (
                cols,
                Coloring::Categorical {
                    key: key.to_string(),
                    names: names.clone(),
                    colors: colors.clone(),
                    counts,
                    codes: codes.clone(),
                    confidence: None,
                },
            )
        }
        ColorBy::Continuous { values, cmap, .. } => {
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for &v in values.iter().filter(|v| v.is_finite()) {
                lo = lo.min(v);
                hi = hi.max(v);
            }
            let span = if hi > lo { hi - lo } else { 1.0 };
            let cols = (0..n)
                .map(|i| match values.get(i) {
                    Some(v) if v.is_finite() => cmap.map((v - lo) / span),
                    _ => figure::NA_COLOR,
                })
                .collect();
            (
                cols,
                Coloring::Continuous {
                    key: key.to_string(),
                    min: lo,
                    max: hi,
                    cmap: *cmap,
                },
            )
        }
    }
}

fn save_png(path: &Path, image: &egui::ColorImage) -> anyhow::Result<()> {
    let [w, h] = image.size;
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, u32::try_from(w)?, u32::try_from(h)?);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        let data: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
        writer.write_image_data(&data)?;
    }
    figure::write_atomic(path, &bytes)?;
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn c32(c: [u8; 4]) -> Color32 {
    Color32::from_rgba_unmultiplied(c[0], c[1], c[2], c[3])
}

/// A text field whose accessible name is `label`.
fn labelled_text(ui: &mut egui::Ui, label: &str, value: &mut String, width: f32) -> egui::Response {
    ui.horizontal(|ui| {
        let l = ui.label(label);
        ui.add(egui::TextEdit::singleline(value).desired_width(width))
            .labelled_by(l.id)
    })
    .inner
}

/// A number field whose accessible name is `label`.
fn labelled_drag<N: egui::emath::Numeric>(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut N,
    range: std::ops::RangeInclusive<N>,
    speed: f64,
    tip: &str,
) {
    ui.horizontal(|ui| {
        let l = ui.label(label).on_hover_text(tip);
        ui.add(egui::DragValue::new(value).range(range).speed(speed))
            .labelled_by(l.id)
            .on_hover_text(tip);
    });
}

fn combo(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut String,
    options: &[String],
    allow_none: bool,
) -> bool {
    let before = value.clone();
    egui::ComboBox::from_label(label)
        .selected_text(if value.is_empty() {
            "(none)".to_string()
        } else {
            value.clone()
        })
        .show_ui(ui, |ui| {
            if allow_none {
                ui.selectable_value(value, String::new(), "(none)");
            }
            for o in options {
                ui.selectable_value(value, o.clone(), o);
            }
        });
    *value != before
}

// ---------------------------------------------------------------------------
// Drawing
// ---------------------------------------------------------------------------

impl CellforgeApp {
    fn menu_ui(&mut self, ui: &mut egui::Ui) {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open…").clicked() {
                    ui.close();
                    self.open_dialog();
                }
                if ui.button("Open the demo").clicked() {
                    ui.close();
                    self.open_demo();
                }
                ui.menu_button("Recent files", |ui| {
                    let recent = self.settings.recent.clone();
                    if recent.is_empty() {
                        ui.weak("none yet");
                    }
                    for p in recent {
                        if ui.button(p.display().to_string()).clicked() {
                            ui.close();
                            self.open(p);
                        }
                    }
                });
                ui.separator();
                if ui.button("Open a model folder…").clicked() {
                    ui.close();
                    if let Some(dir) = rfd::FileDialog::new().pick_folder() {
                        self.open_model(dir);
                    }
                }
                if ui.button("Use the demo model").clicked() {
                    ui.close();
                    self.open_demo_model();
                }
            });
            ui.menu_button("View", |ui| {
                let mut light = self.settings.light;
                if ui.checkbox(&mut light, "Light theme").changed() {
                    self.settings.light = light;
                    self.apply_theme();
                }
            });
            ui.menu_button("Help", |ui| {
                ui.label("Shortcuts: Ctrl+O open, L lasso, B box, P pan, Ctrl+Z undo, Ctrl+Shift+Z redo, Esc clear selection.");
                if ui.button("Using the official scGPT weights").clicked() {
                    ui.close();
                    self.show_weights_help = true;
                }
            });
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if let Some(d) = &self.dataset {
                    ui.label(format!(
                        "{}  {} cells",
                        file_name(&d.source),
                        cellforge_core::fmt::thousands(d.adata.n_obs() as u64)
                    ));
                }
            });
        });
    }

    fn welcome_ui(&mut self, ui: &mut egui::Ui) {
        ui.vertical_centered(|ui| {
            ui.add_space(ui.available_height() * 0.2);
            ui.heading("cellforge");
            ui.label("Single-cell annotation with the scGPT foundation model.");
            ui.add_space(16.0);
            let busy = self.job.is_some();
            if ui
                .add_enabled(!busy, egui::Button::new("Open the demo"))
                .clicked()
            {
                self.open_demo();
            }
            if ui
                .add_enabled(!busy, egui::Button::new("Open a dataset…"))
                .clicked()
            {
                self.open_dialog();
            }
            if ui
                .add_enabled(!busy, egui::Button::new("Open a model…"))
                .clicked()
                && let Some(dir) = rfd::FileDialog::new().pick_folder()
            {
                self.open_model(dir);
            }
            ui.add_space(8.0);
            ui.weak("or drop an .h5ad file onto this window");
            ui.add_space(16.0);
            self.device_line(ui);
            if !self.settings.recent.is_empty() {
                ui.add_space(16.0);
                ui.strong("Recent");
                for p in self.settings.recent.clone() {
                    if ui.link(p.display().to_string()).clicked() {
                        self.open(p);
                    }
                }
            }
        });
    }

    fn device_line(&mut self, ui: &mut egui::Ui) {
        let status = self
            .device_status
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| "looking for a GPU…".into());
        ui.label(format!("Compute: {status}"));
    }

    fn steps_ui(&mut self, ui: &mut egui::Ui) {
        let busy = self.job.is_some();
        let Some(d) = &self.dataset else { return };
        let a = d.adata.clone();
        let version = d.version;
        let cats = categorical_columns(&a);
        let obsm = embeddings(&a);

        egui::CollapsingHeader::new("Data")
            .default_open(true)
            .show(ui, |ui| {
                ui.strong(file_name(&d.source));
                ui.label(format!(
                    "{} cells × {} genes",
                    cellforge_core::fmt::thousands(a.n_obs() as u64),
                    cellforge_core::fmt::thousands(a.n_vars() as u64)
                ));
                ui.label(d.summary.x_verdict());
                for w in &d.warnings {
                    ui.colored_label(ui.visuals().warn_fg_color, format!("⚠ {w}"));
                }
                if !obsm.is_empty() {
                    ui.label(format!("Embeddings: {}", obsm.join(", ")));
                }
                for s in &d.steps {
                    ui.weak(format!("✔ {s}"));
                }
            });

        egui::CollapsingHeader::new("Model")
            .default_open(true)
            .show(ui, |ui| {
                match &self.model {
                    Some(m) => {
                        ui.strong(file_name(&m.dir));
                        ui.label(&m.architecture);
                        // Matched once per (data version, model), not every frame.
                        let key = (version, m.dir.clone());
                        let (n_matched, n_genes) = match &self.genes_matched {
                            Some((k, n, g)) if *k == key => (*n, *g),
                            _ => {
                                let r = m.vocab.match_genes(a.var_names());
                                self.genes_matched = Some((key, r.n_matched, r.n_genes));
                                (r.n_matched, r.n_genes)
                            }
                        };
                        ui.label(format!(
                            "Vocabulary {} genes; {} of {} dataset genes matched",
                            cellforge_core::fmt::thousands(m.vocab.len() as u64),
                            cellforge_core::fmt::thousands(n_matched as u64),
                            cellforge_core::fmt::thousands(n_genes as u64)
                        ));
                        if !m.classes.is_empty() {
                            ui.label(format!("Classifier: {} cell types", m.classes.len()));
                        }
                    }
                    None => {
                        ui.weak("No model yet.");
                    }
                }
                ui.horizontal(|ui| {
                    if ui
                        .add_enabled(!busy, egui::Button::new("Use the demo model"))
                        .on_hover_text("A small scGPT-architecture model cellforge pretrained on the demo data")
                        .clicked()
                    {
                        self.open_demo_model();
                    }
                    if ui
                        .add_enabled(!busy, egui::Button::new("Open a model…"))
                        .on_hover_text("A folder with scGPT's best_model.pt, args.json and vocab.json, or a cellforge model")
                        .clicked()
                        && let Some(dir) = rfd::FileDialog::new().pick_folder()
                    {
                        self.open_model(dir);
                    }
                });
                self.device_line(ui);
                let mut dev = if self.settings.device.is_empty() {
                    "auto".to_string()
                } else {
                    self.settings.device.clone()
                };
                let options: Vec<String> =
                    ["auto", "cuda", "wgpu", "cpu"].iter().map(|s| s.to_string()).collect();
                if combo(ui, "Device", &mut dev, &options, false) {
                    self.settings.device = dev;
                }
            });

        let has_model = self.model.is_some();
        egui::CollapsingHeader::new("Preprocess (optional)")
            .default_open(false)
            .show(ui, |ui| {
                let mut layers: Vec<String> = a.layers.keys().cloned().collect();
                layers.sort();
                combo(ui, "Counts layer", &mut self.preprocess.layer, &layers, true);
                ui.checkbox(&mut self.preprocess.normalize_total, "Normalise to 10,000 per cell");
                ui.checkbox(&mut self.preprocess.log1p, "log1p");
                labelled_drag(
                    ui,
                    "Highly variable genes",
                    &mut self.preprocess.n_hvg,
                    0..=20000,
                    10.0,
                    "How many genes to mark as highly variable (0: none); genes are marked, not removed.",
                );
                combo(ui, "HVG batch column", &mut self.preprocess.batch_key, &cats, true);
                labelled_drag(
                    ui,
                    "Bins",
                    &mut self.preprocess.n_bins,
                    0..=201,
                    1.0,
                    "scGPT's value binning (51 in the tutorials; 0: none) into layers X_binned.",
                );
                if ui
                    .add_enabled(!busy, egui::Button::new("Preprocess"))
                    .on_hover_text("Writes layers X_normed, X_log1p, X_binned and var highly_variable; X is kept")
                    .clicked()
                {
                    self.run_preprocess();
                }
            });

        egui::CollapsingHeader::new("1. Embed cells")
            .default_open(true)
            .show(ui, |ui| {
                labelled_drag(
                    ui,
                    "Cells per batch",
                    &mut self.embed.batch_size,
                    1..=4096,
                    1.0,
                    "How many cells go through the model at once; lower it if memory runs out.",
                );
                labelled_drag(
                    ui,
                    "Genes per cell",
                    &mut self.embed.max_length,
                    2..=20000,
                    10.0,
                    "Most genes (tokens) read per cell; scGPT embeds with up to 1,200.",
                );
                let b = ui.add_enabled(!busy && has_model, egui::Button::new("Embed cells"));
                if !has_model {
                    b.on_hover_text("Open a model first");
                } else if b.clicked() {
                    self.run_embed();
                }
            });

        egui::CollapsingHeader::new("2. Map and cluster")
            .default_open(true)
            .show(ui, |ui| {
                let reps: Vec<String> = obsm
                    .iter()
                    .filter(|k| *k != "X_umap" && *k != "X_tsne")
                    .cloned()
                    .collect();
                if !reps.contains(&self.umap.use_rep)
                    && let Some(first) = reps
                        .iter()
                        .find(|r| *r == "X_scGPT")
                        .or_else(|| reps.first())
                {
                    self.umap.use_rep = first.clone();
                }
                combo(ui, "Representation", &mut self.umap.use_rep, &reps, false);
                labelled_drag(
                    ui,
                    "Neighbours",
                    &mut self.umap.n_neighbors,
                    2..=200,
                    1.0,
                    "Neighbours per cell in the graph UMAP and Leiden use (scanpy's default 15).",
                );
                labelled_drag(
                    ui,
                    "Min. distance",
                    &mut self.umap.min_dist,
                    0.0..=1.0,
                    0.01,
                    "How tightly UMAP packs similar cells (scanpy's default 0.5).",
                );
                let can = !busy && !reps.is_empty();
                if ui
                    .add_enabled(can, egui::Button::new("Compute UMAP"))
                    .clicked()
                {
                    self.run_umap();
                }
                labelled_drag(
                    ui,
                    "Resolution",
                    &mut self.leiden_resolution,
                    0.05..=10.0,
                    0.05,
                    "Higher finds more, smaller clusters.",
                );
                if ui
                    .add_enabled(can, egui::Button::new("Cluster (Leiden)"))
                    .clicked()
                {
                    self.run_leiden();
                }
            });

        egui::CollapsingHeader::new("3. Fine-tune")
            .default_open(false)
            .show(ui, |ui| self.finetune_form(ui, &cats, busy, has_model));

        egui::CollapsingHeader::new("4. Annotate")
            .default_open(true)
            .show(ui, |ui| {
                let classifier = self.tuned.as_ref().map(|t| t.classes.len()).or_else(|| {
                    self.model
                        .as_ref()
                        .filter(|m| !m.classes.is_empty())
                        .map(|m| m.classes.len())
                });
                match classifier {
                    Some(k) => ui.label(format!("Classifier with {k} cell types ready.")),
                    None => ui.weak("Fine-tune a model with CLS first."),
                };
                if let Some(t) = &self.tuned {
                    ui.weak(format!("Fine-tuned model saved in {}", t.dir.display()))
                        .on_hover_text("Open this folder as a model later, or pass it to `cellforge annotate --model`");
                }
                ui.horizontal(|ui| {
                    let l = ui.label("Min. confidence");
                    ui.add(egui::Slider::new(&mut self.min_confidence, 0.0..=1.0))
                        .labelled_by(l.id)
                        .on_hover_text(
                            "Cells whose top probability is lower are labelled Unknown.",
                        );
                });
                if ui
                    .add_enabled(
                        !busy && classifier.is_some(),
                        egui::Button::new("Annotate cells"),
                    )
                    .clicked()
                {
                    self.run_annotate();
                }
            });

        egui::CollapsingHeader::new("Map onto a reference")
            .default_open(false)
            .show(ui, |ui| {
                let mut p = std::mem::take(&mut self.map_reference);
                labelled_text(ui, "Reference", &mut p, 160.0);
                self.map_reference = p;
                if ui.button("Browse reference…").clicked()
                    && let Some(f) = rfd::FileDialog::new()
                        .add_filter("AnnData", &["h5ad"])
                        .pick_file()
                {
                    self.map_reference = f.display().to_string();
                }
                labelled_text(ui, "Reference label column", &mut self.map_label_key, 110.0);
                labelled_drag(
                    ui,
                    "Neighbours voting",
                    &mut self.map_k,
                    1..=100,
                    1.0,
                    "Each cell takes the majority label of this many most similar reference cells.",
                );
                if ui
                    .add_enabled(!busy && has_model, egui::Button::new("Map onto reference"))
                    .on_hover_text("Embeds reference and data with the open model; writes obs mapped_cell_type and its vote fraction")
                    .clicked()
                {
                    self.run_map();
                }
            });

        egui::CollapsingHeader::new("Gene programs")
            .default_open(false)
            .show(ui, |ui| {
                labelled_drag(
                    ui,
                    "Program resolution",
                    &mut self.programs_resolution,
                    0.1..=200.0,
                    1.0,
                    "Leiden resolution on the genes (scGPT's GRN tutorial: 40); higher gives smaller programs.",
                );
                labelled_drag(
                    ui,
                    "Edge threshold",
                    &mut self.programs_threshold,
                    0.0..=0.99,
                    0.01,
                    "Keep gene pairs whose embeddings have at least this cosine similarity.",
                );
                if ui
                    .add_enabled(!busy && has_model, egui::Button::new("Find gene programs"))
                    .clicked()
                {
                    self.run_gene_programs();
                }
            });

        egui::CollapsingHeader::new("5. Export")
            .default_open(true)
            .show(ui, |ui| {
                let mut path = std::mem::take(&mut self.export_path);
                labelled_text(ui, "Save as", &mut path, 200.0);
                self.export_path = path;
                if ui.button("Browse…").clicked()
                    && let Some(p) = rfd::FileDialog::new()
                        .add_filter("AnnData", &["h5ad"])
                        .set_file_name(file_name(Path::new(&self.export_path)))
                        .save_file()
                {
                    self.export_path = p.display().to_string();
                    self.export_replace = p.exists();
                }
                if Path::new(self.export_path.trim()).exists() {
                    ui.checkbox(&mut self.export_replace, "Replace the existing file");
                }
                if ui
                    .add_enabled(!busy, egui::Button::new("Export annotated h5ad"))
                    .on_hover_text("Writes labels, their provenance, embeddings and what was done; the opened file is never changed.")
                    .clicked()
                {
                    self.run_export();
                }
                labelled_drag(
                    ui,
                    "Figure DPI",
                    &mut self.figure_dpi,
                    50.0..=1200.0,
                    10.0,
                    "Resolution of PNG figures (300 for print; SVG is resolution-free).",
                );
                ui.horizontal(|ui| {
                    let can = !busy && !self.basis.is_empty();
                    if ui.add_enabled(can, egui::Button::new("Figure PNG")).clicked() {
                        let p = Path::new(self.export_path.trim()).with_extension("png");
                        self.export_figure(p);
                    }
                    if ui.add_enabled(can, egui::Button::new("Figure SVG")).clicked() {
                        let p = Path::new(self.export_path.trim()).with_extension("svg");
                        self.export_figure(p);
                    }
                });
            });
    }

    fn finetune_form(&mut self, ui: &mut egui::Ui, cats: &[String], busy: bool, has_model: bool) {
        let f = &mut self.finetune;
        combo(ui, "Cell type column", &mut f.label_key, cats, true);
        combo(ui, "Batch column", &mut f.batch_key, cats, true);
        ui.label("Objectives");
        let objectives: [(&str, &str, &mut bool, &mut f64); 6] = [
            (
                "CLS",
                "Cell type classification: what annotation needs.",
                &mut f.cls,
                &mut f.cls_weight,
            ),
            (
                "GEP",
                "Gene expression prediction of masked genes (keeps the model's knowledge of expression).",
                &mut f.gep,
                &mut f.gep_weight,
            ),
            (
                "GEPC",
                "Expression prediction from the cell embedding alone.",
                &mut f.gepc,
                &mut f.gepc_weight,
            ),
            (
                "ECS",
                "Elastic cell similarity: pulls similar cells together (tutorial weight 10).",
                &mut f.ecs,
                &mut f.ecs_weight,
            ),
            (
                "DAR",
                "Domain adaptation: removes batch effects (needs a batch column).",
                &mut f.dar,
                &mut f.dar_weight,
            ),
            (
                "CCE",
                "Contrastive cell embedding (tutorial weight 10).",
                &mut f.cce,
                &mut f.cce_weight,
            ),
        ];
        for (name, tip, on, w) in objectives {
            ui.horizontal(|ui| {
                ui.checkbox(on, name).on_hover_text(tip);
                if *on {
                    let l = ui.label(format!("{name} weight"));
                    ui.add(egui::DragValue::new(w).range(0.0..=100.0).speed(0.1))
                        .labelled_by(l.id);
                }
            });
        }
        labelled_drag(
            ui,
            "Epochs",
            &mut f.epochs,
            1..=200,
            1.0,
            "Passes over the training cells (scGPT's recipe: 10).",
        );
        labelled_drag(
            ui,
            "Learning rate",
            &mut f.lr,
            1e-6..=1e-2,
            1e-5,
            "Adam step size (recipe: 1e-4, decayed by 0.9 each epoch).",
        );
        labelled_drag(
            ui,
            "Batch size",
            &mut f.batch_size,
            1..=1024,
            1.0,
            "Cells per training step (recipe: 32).",
        );
        labelled_drag(
            ui,
            "Mask ratio",
            &mut f.mask_ratio,
            0.0..=0.95,
            0.01,
            "Share of genes hidden for GEP/GEPC (recipe: 0.4).",
        );
        labelled_drag(
            ui,
            "Validation fraction",
            &mut f.validation_fraction,
            0.0..=0.5,
            0.01,
            "Cells held out to pick the best epoch (recipe: 0.1).",
        );
        labelled_drag(
            ui,
            "Genes per cell (training)",
            &mut f.max_len,
            2..=20000,
            10.0,
            "Most tokens per cell; the recipe uses 3,001, or the model's own length when shorter.",
        );
        ui.checkbox(&mut f.balance_classes, "Balance rare cell types")
            .on_hover_text("Weigh the classification loss by inverse class frequency (not in scGPT's recipe; helps rare types).");
        ui.checkbox(&mut f.augment_depth, "Simulate shallower sequencing")
            .on_hover_text("Every step, each training cell keeps a random 30-100 % of its molecules, so the model also learns what a less deeply sequenced cell looks like; helps when the cells to annotate come from a shallower run or an older chemistry. Reads the file's counts layer (or X, which must then hold raw counts). Not in scGPT's recipe.");
        ui.checkbox(&mut f.mean_pool, "Classify from all genes (mean pooling)")
            .on_hover_text("The classifier reads the mean of the cell's gene tokens instead of the <cls> token. Learns faster for small models and small references; scGPT's recipe reads <cls>.");
        if let Some(p) = f.problem() {
            ui.colored_label(ui.visuals().warn_fg_color, p);
        }
        let ok = !busy && has_model && self.finetune.problem().is_none();
        if ui.add_enabled(ok, egui::Button::new("Fine-tune")).clicked() {
            self.run_finetune();
        }
    }

    fn labels_ui(&mut self, ui: &mut egui::Ui) {
        let Some(d) = &self.dataset else { return };
        let cats = categorical_columns(&d.adata);
        ui.heading("Labels");
        let n_sel = self.scatter.selection().len();
        ui.label(format!(
            "{} cells selected",
            cellforge_core::fmt::thousands(n_sel as u64)
        ));
        match &self.labels {
            None => {
                let default = if cats.contains(&self.color_key) {
                    self.color_key.clone()
                } else {
                    cats.first().cloned().unwrap_or_default()
                };
                let mut col = self
                    .edit_column
                    .clone()
                    .filter(|c| cats.contains(c))
                    .unwrap_or(default);
                ui.label("Pick the column to curate:");
                if combo(ui, "Column to edit", &mut col, &cats, false) {
                    self.edit_column = Some(col.clone());
                }
                labelled_text(ui, "or a new column", &mut self.new_column, 120.0);
                if ui.button("Start editing").clicked() {
                    let c = if self.new_column.trim().is_empty() {
                        col
                    } else {
                        std::mem::take(&mut self.new_column)
                    };
                    self.edit_labels(&c);
                }
            }
            Some(l) => {
                ui.label(format!("Editing obs column {}", l.column));
                let mut label = std::mem::take(&mut self.new_label);
                let r = labelled_text(ui, "Label name", &mut label, 130.0);
                let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                self.new_label = label;
                let can = n_sel > 0 && !self.new_label.trim().is_empty();
                if ui
                    .add_enabled(can, egui::Button::new("Assign to selection"))
                    .on_hover_text("Gives the selected cells this label (Enter in the label field)")
                    .clicked()
                    || (enter && can)
                {
                    self.assign_selection();
                }
                ui.horizontal(|ui| {
                    let (cu, cr) = self.labels.as_ref().map_or((false, false), |l| {
                        (l.session.can_undo(), l.session.can_redo())
                    });
                    if ui.add_enabled(cu, egui::Button::new("Undo")).clicked() {
                        self.undo();
                    }
                    if ui.add_enabled(cr, egui::Button::new("Redo")).clicked() {
                        self.redo();
                    }
                });
                if let Some(l) = &self.labels {
                    let manual = l
                        .session
                        .sources()
                        .iter()
                        .filter(|s| **s == Source::Manual)
                        .count();
                    ui.weak(format!(
                        "{} manual edits, {} cells labelled by hand; journaled to disk",
                        l.edits, manual
                    ));
                }
                ui.collapsing("Rename or merge", |ui| {
                    let names: Vec<String> = self
                        .labels
                        .as_ref()
                        .map(|l| l.session.column().categories().to_vec())
                        .unwrap_or_default();
                    let mut from = self.rename_from.clone();
                    combo(ui, "Label", &mut from, &names, false);
                    self.rename_from = from;
                    labelled_text(ui, "New name", &mut self.rename_to, 110.0);
                    ui.horizontal(|ui| {
                        let ok = !self.rename_from.is_empty() && !self.rename_to.trim().is_empty();
                        if ui.add_enabled(ok, egui::Button::new("Rename")).clicked() {
                            let to = self.rename_to.trim().to_string();
                            let edit = if names.contains(&to) {
                                Edit::Merge {
                                    from: vec![self.rename_from.clone()],
                                    into: to,
                                }
                            } else {
                                Edit::Rename {
                                    from: self.rename_from.clone(),
                                    to,
                                }
                            };
                            self.apply_edit(edit);
                        }
                    });
                    ui.weak("Renaming to an existing label merges the two.");
                });
            }
        }
        ui.horizontal(|ui| {
            let ok = self.job.is_none() && n_sel > 0;
            if ui
                .add_enabled(ok, egui::Button::new("Marker genes"))
                .on_hover_text(
                    "Genes that set the selected cells apart from all others (Wilcoxon rank-sum)",
                )
                .clicked()
            {
                self.run_markers();
            }
            if n_sel > 0 && ui.button("Clear selection").clicked() {
                self.scatter.clear_selection();
            }
        });
        if let Some((n, genes)) = &self.markers {
            ui.weak(format!("Markers of {n} cells:"));
            ui.label(
                genes
                    .iter()
                    .take(15)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        ui.separator();
        self.legend_ui(ui);
    }

    fn legend_ui(&mut self, ui: &mut egui::Ui) {
        let mut select: Option<Vec<u32>> = None;
        match &self.coloring {
            Coloring::Categorical {
                key,
                names,
                colors,
                counts,
                codes,
                confidence,
            } => {
                ui.strong(key);
                if confidence.is_some() {
                    ui.weak("(mean prediction confidence)");
                }
                egui::ScrollArea::vertical()
                    .id_salt("legend")
                    .show(ui, |ui| {
                        for (k, name) in names.iter().enumerate() {
                            let c = colors.get(k).copied().unwrap_or(figure::NA_COLOR);
                            let mut text =
                                format!("{name} ({})", counts.get(k).copied().unwrap_or(0));
                            if let Some(c) = confidence.as_ref().and_then(|c| c.get(k))
                                && c.is_finite()
                            {
                                text.push_str(&format!(" · {c:.2}"));
                            }
                            ui.horizontal(|ui| {
                                let (r, _) = ui.allocate_exact_size(
                                    egui::vec2(12.0, 12.0),
                                    egui::Sense::hover(),
                                );
                                ui.painter().circle_filled(r.center(), 5.0, c32(c));
                                if ui.link(text).on_hover_text("Select these cells").clicked() {
                                    select = Some(
                                        codes
                                            .iter()
                                            .enumerate()
                                            .filter(|(_, c)| **c == k as i32)
                                            .map(|(i, _)| i as u32)
                                            .collect(),
                                    );
                                }
                            });
                        }
                        let na = codes
                            .iter()
                            .filter(|c| **c == UNLABELLED || **c as usize >= names.len())
                            .count();
                        if na > 0 {
                            ui.weak(format!("NA ({na})"));
                        }
                    });
            }
            Coloring::Continuous {
                key,
                min,
                max,
                cmap,
            } => {
                ui.strong(key);
                let (r, _) = ui.allocate_exact_size(egui::vec2(160.0, 12.0), egui::Sense::hover());
                let steps = 32;
                for s in 0..steps {
                    let t0 = s as f32 / steps as f32;
                    let x0 = r.left() + t0 * r.width();
                    let x1 = r.left() + (s + 1) as f32 / steps as f32 * r.width();
                    ui.painter().rect_filled(
                        egui::Rect::from_min_max(
                            egui::pos2(x0, r.top()),
                            egui::pos2(x1, r.bottom()),
                        ),
                        0.0,
                        c32(cmap.map(t0)),
                    );
                }
                ui.label(format!(
                    "{} … {}",
                    cellforge_core::fmt::number(*min as f64),
                    cellforge_core::fmt::number(*max as f64)
                ));
            }
            Coloring::Plain => {}
        }
        if let Some(cells) = select {
            let n = self.points.as_ref().map_or(0, |p| p.len());
            let mut s = Selection::new(n);
            s.combine(super::selection::SelectMode::Replace, &cells);
            self.scatter.set_selection(s);
        }
    }

    fn embedding_ui(&mut self, ui: &mut egui::Ui) {
        let Some(d) = &self.dataset else { return };
        let a = d.adata.clone();
        let obsm = embeddings(&a);
        let mut colorable = colorable_columns(&a);
        if let Some(l) = &self.labels
            && !colorable.contains(&l.column)
        {
            colorable.push(l.column.clone());
        }
        ui.horizontal(|ui| {
            let mut basis = self.basis.clone();
            if combo(ui, "Embedding", &mut basis, &obsm, false) {
                self.basis = basis;
                self.scatter.fit();
            }
            let mut key = self.color_key.clone();
            if combo(ui, "Colour by", &mut key, &colorable, true) {
                self.color_key = key;
            }
            ui.horizontal(|ui| {
                let l = ui.label("Gene");
                let r = ui
                    .add(
                        egui::TextEdit::singleline(&mut self.gene_color)
                            .desired_width(70.0)
                            .hint_text("CD3E"),
                    )
                    .labelled_by(l.id);
                let typed = self.gene_color.clone();
                if r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
                    if a.var_names().iter().any(|g| g == typed.trim()) {
                        self.color_key = typed.trim().to_string();
                    } else {
                        self.error = Some(Failure::new(
                            format!("No gene named {} in this dataset", typed.trim()),
                            "gene names are matched exactly against var's index",
                        ));
                    }
                }
            });
            ui.separator();
            ui.selectable_value(&mut self.scatter.tool, Tool::Pan, "Pan")
                .on_hover_text("Drag to pan, scroll to zoom (P)");
            ui.selectable_value(&mut self.scatter.tool, Tool::Lasso, "Lasso")
                .on_hover_text("Draw around cells to select them; Shift adds, Alt removes (L)");
            ui.selectable_value(&mut self.scatter.tool, Tool::Box, "Box")
                .on_hover_text("Drag a rectangle to select (B)");
            if ui.button("Fit").clicked() {
                self.scatter.fit();
            }
        });
        if obsm.is_empty() {
            ui.add_space(40.0);
            ui.vertical_centered(|ui| {
                ui.label("No embedding yet: open a model, then Embed cells and Compute UMAP.");
            });
            return;
        }
        self.refresh_points();
        let Some(points) = self.points.clone() else {
            return;
        };
        let r = scatter_ui(ui, &mut self.scatter, &points);
        if let Some(i) = r.hovered {
            let i = i as usize;
            r.response.on_hover_ui_at_pointer(|ui| {
                ui.strong(a.obs_names().get(i).cloned().unwrap_or_default());
                let cols = colorable_columns(&a);
                for c in cols.iter().take(8) {
                    if let Some(v) = cell_value(&a, c, i) {
                        ui.label(format!("{c}: {v}"));
                    }
                }
                if let Some(l) = &self.labels {
                    ui.label(format!(
                        "{}: {} ({})",
                        l.column,
                        l.session.column().label_of(i).unwrap_or("NA"),
                        l.session.sources().get(i).map_or("", |s| s.as_str())
                    ));
                }
            });
        }
    }

    fn cells_ui(&mut self, ui: &mut egui::Ui) {
        let Some(d) = &self.dataset else { return };
        let version = d.version;
        if self.table.as_ref().is_none_or(|t| t.0 != version) {
            let a = &d.adata;
            let names = colorable_columns(a);
            let cols: Vec<Vec<String>> = names
                .iter()
                .map(|n| {
                    (0..a.n_obs())
                        .map(|i| cell_value(a, n, i).unwrap_or_default())
                        .collect()
                })
                .collect();
            self.table = Some((version, names, cols));
        }
        let Some((_, names, cols)) = &self.table else {
            return;
        };
        let index = d.adata.obs_names();
        labelled_text(ui, "Filter cells", &mut self.table_filter, 200.0);
        let f = self.table_filter.trim().to_lowercase();
        let mut rows: Vec<usize> = (0..index.len())
            .filter(|&i| {
                f.is_empty()
                    || index[i].to_lowercase().contains(&f)
                    || cols.iter().any(|c| c[i].to_lowercase().contains(&f))
            })
            .collect();
        if let Some((c, asc)) = self.table_sort {
            let key = |i: &usize| -> (Option<f64>, String) {
                let s = if c == 0 {
                    index[*i].clone()
                } else {
                    cols[c - 1][*i].clone()
                };
                (s.parse::<f64>().ok(), s)
            };
            rows.sort_by(|a, b| {
                let (ka, kb) = (key(a), key(b));
                let o = match (ka.0, kb.0) {
                    (Some(x), Some(y)) => x.total_cmp(&y),
                    _ => ka.1.cmp(&kb.1),
                };
                if asc { o } else { o.reverse() }
            });
        }
        ui.label(format!("{} of {} cells", rows.len(), index.len()));
        let mut sort_click = None;
        egui::ScrollArea::both().id_salt("cells").show_rows(
            ui,
            18.0,
            rows.len() + 1,
            |ui, range| {
                egui::Grid::new("obs_table").striped(true).show(ui, |ui| {
                    for (k, h) in std::iter::once("cell")
                        .chain(names.iter().map(|s| s.as_str()))
                        .enumerate()
                    {
                        let arrow = match self.table_sort {
                            Some((c, true)) if c == k => " ▲",
                            Some((c, false)) if c == k => " ▼",
                            _ => "",
                        };
                        if ui
                            .button(RichText::new(format!("{h}{arrow}")).strong())
                            .clicked()
                        {
                            sort_click = Some(k);
                        }
                    }
                    ui.end_row();
                    let lo = range.start.saturating_sub(1).min(rows.len());
                    let hi = range.end.saturating_sub(1).min(rows.len());
                    for &i in &rows[lo..hi] {
                        ui.label(&index[i]);
                        for c in cols {
                            ui.label(&c[i]);
                        }
                        ui.end_row();
                    }
                });
            },
        );
        if let Some(k) = sort_click {
            self.table_sort = match self.table_sort {
                Some((c, true)) if c == k => Some((k, false)),
                _ => Some((k, true)),
            };
        }
    }

    fn training_ui(&mut self, ui: &mut egui::Ui) {
        let job = self
            .job
            .as_ref()
            .filter(|j| j.kind == JobKind::Finetune)
            .or(self
                .last_job
                .as_ref()
                .filter(|j| j.kind == JobKind::Finetune));
        if let Some(t) = &self.tuned {
            let h = &t.history;
            ui.label(format!(
                "Fine-tuned model: {} cell types, {} steps in {:.1} s; best epoch {}, validation loss {}{}",
                t.classes.len(),
                h.steps,
                h.seconds,
                h.best_epoch.map_or("-".into(), |e| (e + 1).to_string()),
                h.best_loss.map_or("-".into(), |l| format!("{l:.4}")),
                if h.early_stopped { " (stopped early)" } else { "" }
            ));
        }
        // The running fine-tune's curves, else those of the last one that finished.
        let (losses, terms, valid) = match (job, &self.tuned_curves) {
            (Some(j), _) => (j.losses.clone(), j.terms.clone(), j.valid.clone()),
            (None, Some(c)) => c.clone(),
            (None, None) => {
                ui.label("Loss and accuracy curves appear here while a model is fine-tuned.");
                return;
            }
        };
        use egui_plot::{Legend, Line, Plot, PlotPoints};
        let mut save = false;
        ui.horizontal(|ui| {
            ui.label("Training loss per step; validation loss and accuracy per epoch.");
            save = ui.button("Save curves (PNG + SVG)").clicked();
        });
        let vloss: Vec<[f64; 2]> = valid.iter().map(|v| [(v.0 + 1) as f64, v.1]).collect();
        let vacc: Vec<[f64; 2]> = valid
            .iter()
            .filter_map(|v| v.2.map(|a| [(v.0 + 1) as f64, a * 100.0]))
            .collect();
        let h = (ui.available_height() / 2.0 - 10.0).max(120.0);
        Plot::new("train_loss")
            .legend(Legend::default())
            .height(h)
            .x_axis_label("step")
            .show(ui, |p| {
                p.line(Line::new(
                    "total (weighted)",
                    PlotPoints::from(losses.clone()),
                ));
                // One line per objective when there are several.
                if terms.len() > 1 {
                    for (name, pts) in &terms {
                        p.line(Line::new(name.clone(), PlotPoints::from(pts.clone())));
                    }
                }
            });
        Plot::new("valid")
            .legend(Legend::default())
            .height(h)
            .x_axis_label("epoch")
            .show(ui, |p| {
                p.line(Line::new(
                    "validation loss",
                    PlotPoints::from(vloss.clone()),
                ));
                p.line(Line::new(
                    "validation accuracy (%)",
                    PlotPoints::from(vacc.clone()),
                ));
            });
        if save {
            let train = figure::sketch::line_chart(
                "Fine-tuning: training loss",
                "step",
                "loss",
                &[("training loss", &losses, [31, 119, 180, 255])],
            );
            let valid = figure::sketch::line_chart(
                "Fine-tuning: validation",
                "epoch",
                "loss / accuracy (%)",
                &[
                    ("validation loss", &vloss, [255, 127, 14, 255]),
                    ("accuracy (%)", &vacc, [44, 160, 44, 255]),
                ],
            );
            self.save_figure(&train, "training_loss");
            self.save_figure(&valid, "validation");
        }
    }

    /// Compares `bench_predicted` with `bench_truth` (the Benchmark tab's "Compare").
    pub fn compare_labels(&mut self) {
        let r = self
            .label_values(&self.bench_truth)
            .and_then(|t| Ok((t, self.label_values(&self.bench_predicted)?)))
            .and_then(|(t, p)| {
                super::bench::compare(&self.bench_truth, &t, &self.bench_predicted, &p)
            });
        self.comparison = Some(r);
    }

    /// The comparison shown in the Benchmark tab.
    pub fn comparison(&self) -> Option<&Result<super::bench::Comparison, String>> {
        self.comparison.as_ref()
    }

    /// One label per cell of `column`: the curated labels when it is the column being edited
    /// (what export writes), otherwise obs as stored.
    fn label_values(&self, column: &str) -> Result<Vec<Option<String>>, String> {
        if let Some(l) = self.labels.as_ref().filter(|l| l.column == column) {
            let c = l.session.column();
            return Ok((0..c.n_cells())
                .map(|i| c.label_of(i).map(str::to_string))
                .collect());
        }
        let d = self.dataset.as_ref().ok_or("no dataset is open")?;
        Ok(d.adata.obs.categorical(column)?.labels())
    }

    pub fn run_integration(&mut self) {
        let Some(d) = &self.dataset else { return };
        let adata = d.adata.clone();
        let labels = self.label_values(&self.bench_truth);
        let batches = if self.bench_batch.is_empty() {
            Ok(None)
        } else {
            self.label_values(&self.bench_batch).map(Some)
        };
        let (labels, batches) = match (labels, batches) {
            (Ok(l), Ok(b)) => (l, b),
            (Err(e), _) | (_, Err(e)) => {
                self.error = Some(Failure::new("Could not compute the integration metrics", e));
                return;
            }
        };
        let (rep, label, batch) = (
            self.umap.use_rep.clone(),
            self.bench_truth.clone(),
            self.bench_batch.clone(),
        );
        self.start(JobKind::Metrics, move |r| {
            work::integration(adata, rep, (label, labels), (batch, batches), r)
        });
    }

    fn benchmark_ui(&mut self, ui: &mut egui::Ui) {
        let Some(d) = &self.dataset else { return };
        let mut cats = categorical_columns(&d.adata);
        if let Some(l) = &self.labels
            && !cats.contains(&l.column)
        {
            cats.push(l.column.clone());
        }
        let reps: Vec<String> = embeddings(&d.adata)
            .into_iter()
            .filter(|k| k != "X_umap" && k != "X_tsne")
            .collect();
        if self.bench_truth.is_empty() {
            self.bench_truth = self.finetune.label_key.clone();
        }
        if self.bench_predicted.is_empty() && cats.iter().any(|c| c == "predicted_cell_type") {
            self.bench_predicted = "predicted_cell_type".into();
        }
        ui.horizontal(|ui| {
            combo(ui, "Truth column", &mut self.bench_truth, &cats, false);
            combo(
                ui,
                "Predicted column",
                &mut self.bench_predicted,
                &cats,
                false,
            );
            let ok = !self.bench_truth.is_empty() && !self.bench_predicted.is_empty();
            if ui.add_enabled(ok, egui::Button::new("Compare")).clicked() {
                self.compare_labels();
            }
        });
        match &self.comparison {
            Some(Ok(c)) => super::bench::comparison_ui(ui, c),
            Some(Err(e)) => {
                ui.colored_label(ui.visuals().error_fg_color, e);
            }
            None => {
                ui.weak(
                    "Pick the column with the true cell types and the one to score, then Compare.",
                );
            }
        }
        ui.separator();
        ui.strong("Integration metrics (scib)");
        ui.horizontal(|ui| {
            combo(ui, "Embedding to score", &mut self.umap.use_rep, &reps, false);
            combo(ui, "Batch column ", &mut self.bench_batch, &cats, true);
            let ok = self.job.is_none() && !self.bench_truth.is_empty() && !reps.is_empty();
            if ui
                .add_enabled(ok, egui::Button::new("Compute integration metrics"))
                .on_hover_text("NMI/ARI of the best Leiden clustering, silhouette widths and graph connectivity, as scib and scGPT report them; labels from the truth column.")
                .clicked()
            {
                self.run_integration();
            }
        });
        if let Some((desc, m)) = &self.integration {
            ui.weak(desc);
            egui::Grid::new("integration").striped(true).show(ui, |ui| {
                for (k, v) in super::bench::integration_rows(m) {
                    ui.label(k);
                    ui.label(v.map_or("n/a (one batch)".into(), |v| format!("{v:.4}")));
                    ui.end_row();
                }
            });
            if ui.button("Copy metrics as CSV").clicked() {
                ui.ctx().copy_text(super::bench::integration_csv(m));
            }
        }
        if let Some(Ok(c)) = self.comparison.clone() {
            ui.separator();
            ui.horizontal(|ui| {
                let base = Path::new(self.export_path.trim()).with_extension("");
                if ui
                    .button("Save tables (CSV) and confusion matrix (SVG)")
                    .clicked()
                {
                    let stem = base.display().to_string();
                    let files = [
                        (format!("{stem}_scores.csv"), c.table_csv()),
                        (format!("{stem}_confusion.csv"), c.confusion_csv()),
                        (
                            format!("{stem}_confusion.svg"),
                            c.confusion_figure().to_svg(),
                        ),
                    ];
                    let mut saved = Vec::new();
                    for (p, text) in files {
                        match figure::write_atomic(&p, text.as_bytes()) {
                            Ok(()) => saved.push(p),
                            Err(e) => {
                                self.error = Some(Failure::new(format!("Could not write {p}"), e));
                                break;
                            }
                        }
                    }
                    if !saved.is_empty() {
                        self.notice = Some(format!("Saved {}", saved.join(", ")));
                    }
                }
                if ui.button("Save confusion matrix (PNG + SVG)").clicked() {
                    let sk = c.confusion_figure();
                    self.save_figure(&sk, "confusion");
                }
            });
        }
    }

    fn genes_ui(&mut self, ui: &mut egui::Ui) {
        let Some(d) = &self.dataset else { return };
        let has = super::network::has_network(&d.adata);
        let version = d.version;
        if self.network.as_ref().is_some_and(|n| n.0 != version) && !has {
            self.network = None;
        }
        if self.network.is_none() {
            if has {
                ui.label("The data holds a gene similarity network.");
                if ui
                    .add_enabled(
                        self.job.is_none(),
                        egui::Button::new("Show the gene network"),
                    )
                    .clicked()
                {
                    self.run_network_layout();
                }
            } else {
                ui.label("Run Gene programs (steps panel) to see the model's gene network here.");
            }
            return;
        }
        let Some((_, net)) = &self.network else {
            return;
        };
        let min = net.min_similarity;
        let mut select: Option<usize> = None;
        let mut save_net = false;
        ui.horizontal(|ui| {
            let l = ui.label("Similarity threshold");
            ui.add(egui::Slider::new(&mut self.net_threshold, min..=1.0).step_by(0.01))
                .labelled_by(l.id)
                .on_hover_text("Edges join genes whose embeddings have at least this cosine similarity");
            let r = labelled_text(ui, "Find gene", &mut self.gene_query, 90.0);
            if (r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)))
                || ui.button("Find").clicked()
            {
                match net.find(&self.gene_query) {
                    Some(i) => select = Some(i),
                    None => {
                        self.error = Some(Failure::new(
                            format!("{} is not in the network", self.gene_query.trim()),
                            "genes outside the model's vocabulary or without similar genes are not shown",
                        ))
                    }
                }
            }
            if ui.button("Fit").clicked() {
                self.net_view.fit();
            }
            if ui.button("Save network (PNG + SVG)").clicked() {
                save_net = true;
            }
        });
        let edges = net.edges_above(self.net_threshold);
        ui.label(format!(
            "{} genes, {} programs, {} edges shown",
            net.genes.len(),
            net.program_names.len(),
            edges.len()
        ));
        if let Some(i) = select {
            let mut s = Selection::new(net.genes.len());
            s.combine(super::selection::SelectMode::Replace, &[i as u32]);
            self.net_view.set_selection(s);
        }
        let selected = self.net_view.selection().to_vec();
        if save_net {
            let mut named: Vec<usize> = selected.iter().map(|&g| g as usize).collect();
            if let Some(&g) = selected.first() {
                named.extend(
                    net.neighbours(g as usize, self.net_threshold)
                        .iter()
                        .take(12)
                        .map(|x| x.0),
                );
            }
            let sk = net.figure(self.net_threshold, &named);
            self.save_figure(&sk, "gene_network");
            return;
        }
        if let Some(&g) = selected.first() {
            let g = g as usize;
            let nb = net.neighbours(g, self.net_threshold);
            ui.label(format!(
                "{} (program {}): {}",
                net.genes[g],
                usize::try_from(net.programs[g])
                    .ok()
                    .and_then(|p| net.program_names.get(p))
                    .map_or("none", String::as_str),
                if nb.is_empty() {
                    "no similar genes at this threshold".to_string()
                } else {
                    nb.iter()
                        .take(12)
                        .map(|(j, w)| format!("{} {w:.2}", net.genes[*j]))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
        let Some(points) = self.net_points.clone() else {
            return;
        };
        let r = scatter_ui(ui, &mut self.net_view, &points);
        if let Some(v) = self.net_view.view() {
            let painter = ui.painter_at(r.response.rect);
            let stroke_color = if ui.visuals().dark_mode {
                Color32::from_rgba_unmultiplied(200, 200, 200, 40)
            } else {
                Color32::from_rgba_unmultiplied(60, 60, 60, 40)
            };
            let pos = net.positions.as_slice();
            let mut shapes = Vec::with_capacity(edges.len().min(50_000));
            for &(a, b, _) in edges.iter().take(50_000) {
                let (pa, pb) = (v.to_screen(pos[a as usize]), v.to_screen(pos[b as usize]));
                shapes.push(egui::Shape::line_segment(
                    [egui::pos2(pa[0], pa[1]), egui::pos2(pb[0], pb[1])],
                    egui::Stroke::new(0.7, stroke_color),
                ));
            }
            painter.extend(shapes);
            // Names of the selected gene and its neighbours.
            if let Some(&g) = selected.first() {
                let font = egui::FontId::proportional(12.0);
                let mut named = vec![g as usize];
                named.extend(
                    net.neighbours(g as usize, self.net_threshold)
                        .iter()
                        .take(12)
                        .map(|x| x.0),
                );
                for i in named {
                    let p = v.to_screen(pos[i]);
                    painter.text(
                        egui::pos2(p[0] + 5.0, p[1]),
                        egui::Align2::LEFT_CENTER,
                        &net.genes[i],
                        font.clone(),
                        ui.visuals().strong_text_color(),
                    );
                }
            }
        }
        if let Some(i) = r.hovered {
            let i = i as usize;
            r.response.on_hover_ui_at_pointer(|ui| {
                ui.strong(&net.genes[i]);
                ui.label(format!(
                    "program {}",
                    usize::try_from(net.programs[i])
                        .ok()
                        .and_then(|p| net.program_names.get(p))
                        .map_or("none", String::as_str)
                ));
            });
        }
    }

    fn job_ui(&mut self, ui: &mut egui::Ui) {
        if let Some(j) = &self.job {
            // Fixed-width parts first, so the Cancel button never moves while the stage text
            // changes under the pointer.
            ui.horizontal(|ui| {
                ui.spinner();
                if j.is_cancelling() {
                    ui.add_enabled(false, egui::Button::new("Cancelling…"));
                } else if ui.button("Cancel").clicked() {
                    j.cancel();
                }
                let frac = j.fraction().unwrap_or(0.0);
                let mut text = format!("{:.0}%", frac * 100.0);
                if let Some(eta) = j.eta() {
                    text.push_str(&format!(", {} left", jobs::format_duration(eta)));
                }
                ui.add(egui::ProgressBar::new(frac).desired_width(240.0).text(text));
                ui.strong(j.title());
                ui.label(&j.stage);
                ui.weak(jobs::format_duration(j.started.elapsed()));
            });
        } else if let Some(n) = &self.notice {
            ui.horizontal(|ui| {
                ui.label(format!("✔ {n}"));
            });
        }
        let log = self
            .job
            .as_ref()
            .or(self.last_job.as_ref())
            .map(|j| j.log.clone())
            .unwrap_or_default();
        if !log.is_empty() {
            egui::CollapsingHeader::new("Log").show(ui, |ui| {
                egui::ScrollArea::vertical()
                    .max_height(100.0)
                    .stick_to_bottom(true)
                    .show(ui, |ui| {
                        for l in &log {
                            ui.monospace(l);
                        }
                    });
            });
        }
    }

    fn shortcuts(&mut self, ctx: &egui::Context) {
        let typing = ctx.egui_wants_keyboard_input();
        let (undo, redo, open) = ctx.input_mut(|i| {
            let redo = i.consume_key(
                egui::Modifiers::COMMAND | egui::Modifiers::SHIFT,
                egui::Key::Z,
            ) || i.consume_key(egui::Modifiers::COMMAND, egui::Key::Y);
            let undo = i.consume_key(egui::Modifiers::COMMAND, egui::Key::Z);
            let open = i.consume_key(egui::Modifiers::COMMAND, egui::Key::O);
            (undo, redo, open)
        });
        if undo && !typing {
            self.undo();
        }
        if redo && !typing {
            self.redo();
        }
        if open {
            self.open_dialog();
        }
        if !typing {
            ctx.input(|i| {
                if i.key_pressed(egui::Key::L) {
                    self.scatter.tool = Tool::Lasso;
                }
                if i.key_pressed(egui::Key::B) {
                    self.scatter.tool = Tool::Box;
                }
                if i.key_pressed(egui::Key::P) {
                    self.scatter.tool = Tool::Pan;
                }
            });
        }
    }
}

/// One cell's value in an obs column, as text.
fn cell_value(a: &AnnData, column: &str, i: usize) -> Option<String> {
    Some(match a.obs.column(column)? {
        Element::Categorical(c) => {
            let code = *c.codes.get(i)?;
            if code < 0 {
                "NA".into()
            } else {
                match c.categories.as_ref() {
                    Element::Strings(s) => s.values.get(code as usize)?.clone(),
                    Element::Dense(d) => {
                        cellforge_core::fmt::number(d.data.get_f64(code as usize)?)
                    }
                    _ => code.to_string(),
                }
            }
        }
        Element::Strings(s) => s.values.get(i)?.clone(),
        Element::NullableString { values, mask, .. } => {
            if *mask.get(i)? {
                "NA".into()
            } else {
                values.get(i)?.clone()
            }
        }
        Element::Dense(d) => cellforge_core::fmt::number(d.data.get_f64(i)?),
        Element::NullableInteger { values, mask } => {
            if *mask.get(i)? {
                "NA".into()
            } else {
                cellforge_core::fmt::number(values.get_f64(i)?)
            }
        }
        Element::NullableBoolean { values, mask } => {
            if *mask.get(i)? {
                "NA".into()
            } else {
                values.get(i)?.to_string()
            }
        }
        _ => return None,
    })
}

impl eframe::App for CellforgeApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.poll_job();
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .filter_map(|f| f.path.clone())
                .collect()
        });
        if let Some(path) = dropped.into_iter().next() {
            self.open(path);
        }
        self.shortcuts(ctx);
        self.drive_startup(ctx);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, SETTINGS_KEY, &self.settings);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.frames += 1;
        if self.frames == 2
            && let Ok(v) = std::env::var("CELLFORGE_STARTUP_TRACE")
        {
            // The second call: the first frame has been presented by then.
            if let Some(ms) = super::ms_since_start() {
                eprintln!("first frame after {ms:.0} ms");
            }
            if v == "exit" {
                ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
            }
        }
        egui::Panel::top("menu").show(ui, |ui| self.menu_ui(ui));
        if self.show_weights_help {
            let mut open = true;
            egui::Window::new("Using the official scGPT weights")
                .open(&mut open)
                .default_width(460.0)
                .show(ui.ctx(), |ui| {
                    ui.label(WEIGHTS_HELP);
                    ui.hyperlink_to(
                        "scGPT model zoo (GitHub)",
                        "https://github.com/bowang-lab/scGPT#pretrained-scgpt-model-zoo",
                    );
                    if ui.button("Open a model folder…").clicked()
                        && let Some(dir) = rfd::FileDialog::new().pick_folder()
                    {
                        self.open_model(dir);
                    }
                });
            self.show_weights_help = open;
        }
        egui::Panel::bottom("status").show(ui, |ui| {
            if let Some(f) = self.error.clone() {
                ui.colored_label(ui.visuals().error_fg_color, &f.title);
                egui::CollapsingHeader::new("Details").show(ui, |ui| {
                    ui.monospace(&f.detail);
                });
                if ui.button("Dismiss").clicked() {
                    self.error = None;
                }
                ui.separator();
            }
            self.job_ui(ui);
        });
        if self.dataset.is_some() {
            egui::Panel::left("steps")
                .resizable(true)
                .default_size(300.0)
                .show(ui, |ui| {
                    egui::ScrollArea::vertical().show(ui, |ui| self.steps_ui(ui));
                });
            egui::Panel::right("labels")
                .resizable(true)
                .default_size(230.0)
                .show(ui, |ui| self.labels_ui(ui));
        }
        egui::CentralPanel::default().show(ui, |ui| {
            if self.dataset.is_none() {
                if let Some(j) = &self.job {
                    ui.horizontal(|ui| {
                        ui.spinner();
                        ui.label(&j.stage);
                    });
                }
                self.welcome_ui(ui);
                return;
            }
            ui.horizontal(|ui| {
                ui.selectable_value(&mut self.tab, Tab::Embedding, "Embedding");
                ui.selectable_value(&mut self.tab, Tab::Cells, "Cells");
                ui.selectable_value(&mut self.tab, Tab::Training, "Training");
                ui.selectable_value(&mut self.tab, Tab::Benchmark, "Benchmark");
                ui.selectable_value(&mut self.tab, Tab::Genes, "Genes");
                ui.selectable_value(&mut self.tab, Tab::Summary, "Summary");
            });
            ui.separator();
            match self.tab {
                Tab::Embedding => self.embedding_ui(ui),
                Tab::Cells => self.cells_ui(ui),
                Tab::Training => self.training_ui(ui),
                Tab::Benchmark => self.benchmark_ui(ui),
                Tab::Genes => self.genes_ui(ui),
                Tab::Summary => {
                    if let Some(d) = &self.dataset {
                        egui::ScrollArea::vertical().show(ui, |ui| {
                            ui.monospace(d.summary.render());
                        });
                    }
                }
            }
        });
    }
}
