//! Leiden community detection (Traag, Waltman & van Eck 2019) with the RB-configuration
//! (modularity with resolution) quality, following leidenalg 0.12 as scanpy's
//! `sc.tl.leiden(flavor="leidenalg")` runs it.
//!
//! One iteration ([`leiden`] repeats it `n_iterations` times, or until an iteration no longer
//! improves the quality when `n_iterations < 0`, leidenalg's `-1` that scanpy passes):
//!
//! 1. **Fast local moving**: nodes are visited from a queue (random initial order); each moves
//!    to the neighbouring (or an empty) community with the largest quality gain, if positive;
//!    neighbours outside the new community are re-queued.
//! 2. **Refinement**: starting from singletons inside every community, nodes still alone
//!    are visited in random order and merged into the sub-community of a random neighbour in
//!    the same community when that does not lower the quality (leidenalg's `merge_nodes_constrained`
//!    with `RAND_NEIGH_COMM`; a node stays put with probability `1 / (deg + 1)`).
//! 3. **Aggregation**: the refined sub-communities become nodes of a weighted graph (with
//!    self-loops), initially grouped by the unrefined communities; repeat from 1 while the
//!    graph shrinks.
//!
//! Quality: `Q = (1/S) Σ_c [ Σ_{i,j∈c} A_ij − γ (Σ_{i∈c} k_i)² / S ]` with `S = Σ_ij A_ij` and
//! `k_i = Σ_j A_ij` (the usual normalised modularity at resolution `γ`; leidenalg's
//! `quality()` is `S · Q`). The graph is treated as undirected: a non-symmetric input is
//! symmetrised as `(A + Aᵀ) / 2` (a no-op for scanpy's connectivities). Randomness comes from
//! a seeded xoshiro256** generator, so results are reproducible for a seed but not identical
//! to leidenalg's (Mersenne-Twister) runs.

use crate::tokenize::Rng;
use std::collections::VecDeque;

use super::{AnalysisError, CsrMatrix, Result};

/// Options of [`leiden`].
#[derive(Debug, Clone, PartialEq)]
pub struct LeidenOptions {
    /// Resolution `γ >= 0` (scanpy default 1.0).
    pub resolution: f64,
    /// Seed of the random number generator (scanpy's `random_state`, default 0).
    pub seed: u64,
    /// Number of iterations; negative: iterate until an iteration brings no improvement
    /// (leidenalg/scanpy default -1), capped at [`MAX_ITERATIONS`].
    pub n_iterations: i32,
}

impl Default for LeidenOptions {
    fn default() -> Self {
        Self {
            resolution: 1.0,
            seed: 0,
            n_iterations: -1,
        }
    }
}

/// Safety cap on the number of iterations when `n_iterations < 0`.
pub const MAX_ITERATIONS: usize = 1000;

/// Result of [`leiden`].
#[derive(Debug, Clone, PartialEq)]
pub struct LeidenResult {
    /// Cluster of each node, `0..n_clusters`, numbered by decreasing size (ties: the cluster
    /// whose smallest node index is smaller comes first).
    pub labels: Vec<u32>,
    /// Number of clusters.
    pub n_clusters: usize,
    /// Normalised RB-configuration quality (modularity at the given resolution), see the
    /// module documentation.
    pub quality: f64,
    /// Iterations run.
    pub iterations: usize,
}

/// Leiden clustering of the undirected weighted graph `graph` (square CSR, finite
/// non-negative weights; zero entries are ignored; diagonal entries are self-loops).
pub fn leiden<T: Copy + Into<f64>>(
    graph: &CsrMatrix<T>,
    opts: &LeidenOptions,
) -> Result<LeidenResult> {
    if !(opts.resolution.is_finite() && opts.resolution >= 0.0) {
        return Err(AnalysisError::InvalidParameter(format!(
            "resolution must be finite and >= 0, got {}",
            opts.resolution
        )));
    }
    let g = Graph::from_csr(graph)?;
    let n = g.n;
    let mut rng = Rng::new(opts.seed);
    let mut membership: Vec<usize> = (0..n).collect();
    let mut iterations = 0usize;
    if g.total > 0.0 {
        let max_iter = if opts.n_iterations < 0 {
            MAX_ITERATIONS
        } else {
            opts.n_iterations as usize
        };
        while iterations < max_iter {
            let improv = optimise_once(&g, &mut membership, opts.resolution, &mut rng);
            iterations += 1;
            if opts.n_iterations < 0 && improv <= 0.0 {
                break;
            }
        }
    }
    let labels = number_by_size(&membership);
    let n_clusters = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let quality = g.quality(&labels, opts.resolution);
    Ok(LeidenResult {
        labels,
        n_clusters,
        quality,
        iterations,
    })
}

/// Normalised RB-configuration quality (modularity at resolution `γ`) of a partition of
/// `graph` (see the module documentation). `labels` are arbitrary `u32` codes.
pub fn modularity<T: Copy + Into<f64>>(
    graph: &CsrMatrix<T>,
    labels: &[u32],
    resolution: f64,
) -> Result<f64> {
    if labels.len() != graph.n_rows {
        return Err(AnalysisError::LengthMismatch {
            what: "labels",
            expected: graph.n_rows,
            got: labels.len(),
        });
    }
    if !resolution.is_finite() {
        return Err(AnalysisError::InvalidParameter(format!(
            "resolution must be finite, got {resolution}"
        )));
    }
    let g = Graph::from_csr(graph)?;
    let (_, codes) = super::encode_labels(labels);
    let codes: Vec<u32> = codes.iter().map(|&c| c as u32).collect();
    Ok(g.quality(&codes, resolution))
}

/// Renumbers a membership so that clusters are `0..k` by decreasing size, ties by smallest
/// member index.
fn number_by_size(membership: &[usize]) -> Vec<u32> {
    let n = membership.len();
    let mut size = vec![0usize; n];
    let mut first = vec![usize::MAX; n];
    for (v, &c) in membership.iter().enumerate() {
        size[c] += 1;
        first[c] = first[c].min(v);
    }
    let mut order: Vec<usize> = (0..n).filter(|&c| size[c] > 0).collect();
    order.sort_by(|&a, &b| size[b].cmp(&size[a]).then(first[a].cmp(&first[b])));
    let mut new_id = vec![0u32; n];
    for (r, &c) in order.iter().enumerate() {
        new_id[c] = r as u32;
    }
    membership.iter().map(|&c| new_id[c]).collect()
}

/// Undirected weighted graph with self-loops. `adj`/`w` hold each neighbour `u != v` once per
/// node `v`; `self_w[v] = A_vv`; `strength[v] = Σ_u A_vu` (self-loop included);
/// `total = Σ_v strength[v]`.
struct Graph {
    n: usize,
    ptr: Vec<usize>,
    adj: Vec<usize>,
    w: Vec<f64>,
    self_w: Vec<f64>,
    strength: Vec<f64>,
    total: f64,
}

impl Graph {
    fn from_csr<T: Copy + Into<f64>>(m: &CsrMatrix<T>) -> Result<Self> {
        m.validate()?;
        if m.n_rows != m.n_cols {
            return Err(AnalysisError::InvalidSparse(format!(
                "graph must be square, got {} x {}",
                m.n_rows, m.n_cols
            )));
        }
        let n = m.n_rows;
        if n == 0 {
            return Err(AnalysisError::Empty("graph has no nodes"));
        }
        // symmetrise: entries (i, j, a/2) and (j, i, a/2)
        let mut entries: Vec<(usize, usize, f64)> = Vec::with_capacity(2 * m.nnz());
        for i in 0..n {
            let (idx, val) = m.row(i);
            for (&j, &v) in idx.iter().zip(val) {
                let v: f64 = v.into();
                if !(v.is_finite() && v >= 0.0) {
                    return Err(AnalysisError::InvalidSparse(format!(
                        "edge weight {v} at ({i}, {j}) is not finite and >= 0"
                    )));
                }
                if v > 0.0 {
                    entries.push((i, j as usize, v / 2.0));
                    entries.push((j as usize, i, v / 2.0));
                }
            }
        }
        entries.sort_unstable_by_key(|a| (a.0, a.1));
        let mut ptr = vec![0usize; n + 1];
        let mut adj = Vec::with_capacity(entries.len() / 2 + 1);
        let mut w = Vec::with_capacity(entries.len() / 2 + 1);
        let mut self_w = vec![0.0f64; n];
        let mut strength = vec![0.0f64; n];
        let mut t = 0;
        while t < entries.len() {
            let (i, j) = (entries[t].0, entries[t].1);
            let mut s = 0.0;
            while t < entries.len() && entries[t].0 == i && entries[t].1 == j {
                s += entries[t].2;
                t += 1;
            }
            strength[i] += s;
            if i == j {
                self_w[i] += s;
            } else {
                adj.push(j);
                w.push(s);
                ptr[i + 1] += 1;
            }
        }
        for i in 0..n {
            ptr[i + 1] += ptr[i];
        }
        let total = strength.iter().sum();
        Ok(Self {
            n,
            ptr,
            adj,
            w,
            self_w,
            strength,
            total,
        })
    }

    fn neighbours(&self, v: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        let r = self.ptr[v]..self.ptr[v + 1];
        self.adj[r.clone()]
            .iter()
            .copied()
            .zip(self.w[r].iter().copied())
    }

    fn quality(&self, labels: &[u32], gamma: f64) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        let k = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
        let mut inside = vec![0.0f64; k];
        let mut kc = vec![0.0f64; k];
        for v in 0..self.n {
            let c = labels[v] as usize;
            kc[c] += self.strength[v];
            inside[c] += self.self_w[v];
            for (u, w) in self.neighbours(v) {
                if labels[u] as usize == c {
                    inside[c] += w;
                }
            }
        }
        let s = self.total;
        inside
            .iter()
            .zip(&kc)
            .map(|(&i, &k)| i - gamma * k * k / s)
            .sum::<f64>()
            / s
    }

    /// Collapses the graph by `part` (dense ids `0..n_parts`).
    fn collapse(&self, part: &[usize], n_parts: usize) -> Graph {
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); n_parts];
        for (v, &p) in part.iter().enumerate() {
            members[p].push(v);
        }
        let mut ptr = Vec::with_capacity(n_parts + 1);
        ptr.push(0);
        let mut adj = Vec::new();
        let mut w = Vec::new();
        let mut self_w = vec![0.0f64; n_parts];
        let mut strength = vec![0.0f64; n_parts];
        let mut acc = vec![0.0f64; n_parts];
        let mut seen = vec![false; n_parts];
        let mut touched: Vec<usize> = Vec::new();
        for (a, mem) in members.iter().enumerate() {
            for &v in mem {
                strength[a] += self.strength[v];
                self_w[a] += self.self_w[v];
                for (u, wt) in self.neighbours(v) {
                    let b = part[u];
                    if b == a {
                        self_w[a] += wt;
                    } else {
                        if !seen[b] {
                            seen[b] = true;
                            touched.push(b);
                        }
                        acc[b] += wt;
                    }
                }
            }
            touched.sort_unstable();
            for &b in &touched {
                adj.push(b);
                w.push(acc[b]);
                acc[b] = 0.0;
                seen[b] = false;
            }
            touched.clear();
            ptr.push(adj.len());
        }
        Graph {
            n: n_parts,
            ptr,
            adj,
            w,
            self_w,
            strength,
            total: self.total,
        }
    }
}

/// Renumbers `memb` in place to dense ids `0..k` by decreasing node count (ties: smallest
/// member first), like leidenalg's `renumber_communities`; returns `k`.
fn renumber(memb: &mut [usize]) -> usize {
    let labels = number_by_size(memb);
    let mut k = 0;
    for (m, l) in memb.iter_mut().zip(labels) {
        *m = l as usize;
        k = k.max(l as usize + 1);
    }
    k
}

/// One leidenalg `optimise_partition` call on the original graph; `membership` is updated.
/// Returns the total quality improvement of the moving phases (in weight units).
fn optimise_once(g: &Graph, membership: &mut [usize], gamma: f64, rng: &mut Rng) -> f64 {
    let n = g.n;
    let mut improv = 0.0;
    // aggregate node of every original node
    let mut node_of: Vec<usize> = (0..n).collect();
    let mut level_graph: Option<Graph> = None;
    let mut level_memb: Vec<usize> = membership.to_vec();
    renumber(&mut level_memb);
    loop {
        let cur: &Graph = level_graph.as_ref().unwrap_or(g);
        improv += move_nodes(cur, &mut level_memb, gamma, rng);
        let n_comms = renumber(&mut level_memb);
        for v in 0..n {
            membership[v] = level_memb[node_of[v]];
        }
        // refinement within the communities, then aggregate by the refined partition
        let mut refined = merge_nodes_constrained(cur, &level_memb, gamma, rng);
        let n_refined = renumber(&mut refined);
        for nv in node_of.iter_mut() {
            *nv = refined[*nv];
        }
        let mut new_memb = vec![0usize; n_refined];
        for v in 0..cur.n {
            new_memb[refined[v]] = level_memb[v];
        }
        if !(n_refined < cur.n && cur.n > n_comms) {
            break;
        }
        let new_graph = cur.collapse(&refined, n_refined);
        level_graph = Some(new_graph);
        level_memb = new_memb;
    }
    improv
}

/// Threshold below which a move does not count as an improvement (leidenalg uses
/// `10 * DBL_EPSILON` on twice this gain).
const MIN_GAIN: f64 = 5.0 * f64::EPSILON;

/// Fast local moving (queue based). Community ids in `memb` must be `< g.n`.
fn move_nodes(g: &Graph, memb: &mut [usize], gamma: f64, rng: &mut Rng) -> f64 {
    let n = g.n;
    let s = g.total;
    let mut k_comm = vec![0.0f64; n];
    let mut cnodes = vec![0usize; n];
    for v in 0..n {
        k_comm[memb[v]] += g.strength[v];
        cnodes[memb[v]] += 1;
    }
    let mut empty: Vec<usize> = (0..n).rev().filter(|&c| cnodes[c] == 0).collect();
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let mut queue: VecDeque<usize> = order.into_iter().collect();
    let mut stable = vec![false; n];
    let mut w_to = vec![0.0f64; n];
    let mut seen = vec![false; n];
    let mut comms: Vec<usize> = Vec::new();
    let mut improv = 0.0;
    while let Some(v) = queue.pop_front() {
        let old = memb[v];
        let kv = g.strength[v];
        for (u, w) in g.neighbours(v) {
            let c = memb[u];
            if !seen[c] {
                seen[c] = true;
                comms.push(c);
            }
            w_to[c] += w;
        }
        let stay = w_to[old] - gamma * kv * (k_comm[old] - kv) / s;
        let mut best = old;
        let mut best_gain = MIN_GAIN;
        for &c in &comms {
            if c == old {
                continue;
            }
            let gain = (w_to[c] - gamma * kv * k_comm[c] / s) - stay;
            if gain > best_gain {
                best = c;
                best_gain = gain;
            }
        }
        let mut to_empty = false;
        if cnodes[old] > 1
            && let Some(&e) = empty.last()
            && -stay > best_gain
        {
            best = e;
            best_gain = -stay;
            to_empty = true;
        }
        for &c in &comms {
            w_to[c] = 0.0;
            seen[c] = false;
        }
        comms.clear();
        stable[v] = true;
        if best != old {
            improv += best_gain;
            if to_empty {
                empty.pop();
            }
            k_comm[old] -= kv;
            cnodes[old] -= 1;
            if cnodes[old] == 0 {
                k_comm[old] = 0.0;
                empty.push(old);
            }
            k_comm[best] += kv;
            cnodes[best] += 1;
            memb[v] = best;
            for (u, _) in g.neighbours(v) {
                if stable[u] && memb[u] != best {
                    stable[u] = false;
                    queue.push_back(u);
                }
            }
        }
    }
    improv
}

/// Refinement: merge singletons into the sub-community of a random neighbour within the same
/// community of `constraint` when the gain is >= 0. Returns the refined membership (not
/// renumbered).
fn merge_nodes_constrained(
    g: &Graph,
    constraint: &[usize],
    gamma: f64,
    rng: &mut Rng,
) -> Vec<usize> {
    let n = g.n;
    let s = g.total;
    let mut refined: Vec<usize> = (0..n).collect();
    let mut k_comm: Vec<f64> = g.strength.clone();
    let mut cnodes = vec![1usize; n];
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let mut cand: Vec<usize> = Vec::new();
    for v in order {
        let own = refined[v];
        if cnodes[own] != 1 {
            continue;
        }
        cand.clear();
        if g.self_w[v] > 0.0 {
            cand.push(v);
        }
        cand.extend(
            g.neighbours(v)
                .filter(|&(u, _)| constraint[u] == constraint[v])
                .map(|(u, _)| u),
        );
        let k = cand.len();
        if k == 0 || rng.below_unbiased(k as u64 + 1) == 0 {
            continue;
        }
        let u = cand[rng.below_unbiased(k as u64) as usize];
        let c = refined[u];
        if c == own {
            continue;
        }
        let kv = g.strength[v];
        let w_vc: f64 = g
            .neighbours(v)
            .filter(|&(x, _)| refined[x] == c)
            .map(|(_, w)| w)
            .sum();
        let gain = w_vc - gamma * kv * k_comm[c] / s;
        if gain >= 0.0 {
            k_comm[own] -= kv;
            cnodes[own] -= 1;
            k_comm[c] += kv;
            cnodes[c] += 1;
            refined[v] = c;
        }
    }
    refined
}
