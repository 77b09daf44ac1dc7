//! Reads an h5ad file on a worker thread and reports back through a channel.

use std::path::PathBuf;
use std::sync::mpsc;

use cellforge_core::io::read_h5ad_backed;
use cellforge_core::summary::Summary;

/// What a finished load delivers to the UI.
#[derive(Debug)]
pub enum LoadResult {
    Loaded {
        path: PathBuf,
        summary: Box<Summary>,
        obs_preview: Vec<Vec<String>>,
        obs_columns: Vec<String>,
        warnings: Vec<String>,
    },
    Failed {
        path: PathBuf,
        error: String,
    },
}

/// Starts reading `path`; the result arrives on the returned channel and `ctx` is repainted.
pub fn spawn_load(path: PathBuf, ctx: egui::Context) -> mpsc::Receiver<LoadResult> {
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("h5ad-loader".into())
        .spawn({
            let path = path.clone();
            let ctx = ctx.clone();
            move || {
                let result = load(&path);
                let _ = tx.send(result);
                ctx.request_repaint();
            }
        });
    if let Err(e) = spawned {
        let (tx, rx2) = mpsc::sync_channel(1);
        let _ = tx.send(LoadResult::Failed {
            path,
            error: format!("could not start a worker thread: {e}"),
        });
        return rx2;
    }
    rx
}

const PREVIEW_ROWS: usize = 200;

fn load(path: &std::path::Path) -> LoadResult {
    let opened = read_h5ad_backed(path).and_then(|(adata, backed, warnings)| {
        let size = std::fs::metadata(path).ok().map(|m| m.len());
        Summary::of_backed(&adata, &backed, warnings, size).map(|(s, w)| (adata, s, w))
    });
    match opened {
        Ok((adata, summary, warnings)) => {
            let obs_columns: Vec<String> =
                adata.obs.columns.iter().map(|(n, _)| n.clone()).collect();
            let rendered: Vec<Vec<String>> = adata
                .obs
                .columns
                .iter()
                .map(|(_, el)| column_strings(el, PREVIEW_ROWS))
                .collect();
            let obs_preview = (0..adata.n_obs().min(PREVIEW_ROWS))
                .map(|i| {
                    let mut row = vec![adata.obs.index[i].clone()];
                    row.extend(
                        rendered
                            .iter()
                            .map(|c| c.get(i).cloned().unwrap_or_default()),
                    );
                    row
                })
                .collect();
            LoadResult::Loaded {
                path: path.to_path_buf(),
                summary: Box::new(summary),
                obs_preview,
                obs_columns,
                warnings: warnings.iter().map(|w| w.to_string()).collect(),
            }
        }
        Err(e) => LoadResult::Failed {
            path: path.to_path_buf(),
            error: e.to_string(),
        },
    }
}

fn column_strings(el: &cellforge_core::anndata::Element, n: usize) -> Vec<String> {
    use cellforge_core::anndata::Element;
    match el {
        Element::Categorical(c) => c
            .labels()
            .into_iter()
            .take(n)
            .map(|l| l.unwrap_or_else(|| "NA".into()))
            .collect(),
        Element::Strings(s) => s.values.iter().take(n).cloned().collect(),
        Element::Dense(a) => (0..a.data.len().min(n))
            .map(|i| {
                a.data
                    .get_f64(i)
                    .map(cellforge_core::fmt::number)
                    .unwrap_or_default()
            })
            .collect(),
        other => vec![other.encoding_type().to_string(); n],
    }
}
