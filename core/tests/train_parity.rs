//! The training engine against the real scGPT 0.2.4 package, and against calculus.
//!
//! Goldens: `tests/fixtures/train/*`, written by `scripts/reference/make_train_goldens.py`
//! (scgpt on PyTorch, CPU, fp32, train mode, dropout 0): the same weights, batch and mask,
//! every loss term of the first step, every parameter's gradient, the weights after one
//! clipped Adam step, the losses of the second step and DSBN running statistics.
//!
//! Gradient checks: burn's autodiff gradients of each objective against central finite
//! differences along a random direction, on a tiny model with every head.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use cellforge_core::model::config::{InputNorm, MvcStyle};
use cellforge_core::model::statedict::{HostTensor, StateDict};
use cellforge_core::model::weights::{Layout, ParamVisitor, visit};
use cellforge_core::model::{ModelConfig, ModelFiles, ModelKind, ScGpt, TokenBatch};
use cellforge_core::train::data::TrainBatch;
use cellforge_core::train::optim::{Adam, AdamConfig, Freeze};
use cellforge_core::train::{Objectives, compute_losses};
use common::Io;

type Inner = burn::backend::Flex;
type B = Autodiff<Inner>;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/train")
        .join(case)
}

fn train_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("train.json")).unwrap()).unwrap()
}

/// The objectives and weights the reference used (`loss_weights` in train.json).
fn objectives(t: &serde_json::Value) -> Objectives {
    let w = &t["loss_weights"];
    let g = |k: &str| w.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
    Objectives {
        gep: g("mse"),
        gepc: g("gepc"),
        ecs: g("ecs"),
        ecs_threshold: t["constructor_kwargs"]["ecs_threshold"]
            .as_f64()
            .unwrap_or(0.3),
        dar: g("dab"),
        cls: g("cls"),
        cce: g("cce"),
        class_weights: Vec::new(),
    }
}

fn batch<Bk: Backend>(io: &Io, dev: &Bk::Device) -> TrainBatch<Bk> {
    let batch_labels = io.has("batch_labels").then(|| {
        let (s, v) = io.get("batch_labels");
        let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
        Tensor::<Bk, 1, Int>::from_data(TensorData::new(v, [s[0]]), dev)
    });
    let dsbn_domain = io
        .has("batch_labels")
        .then(|| io.get("batch_labels").1[0] as usize);
    let (s, v) = io.get("celltype_labels");
    let labels: Vec<i64> = v.iter().map(|&x| x as i64).collect();
    TrainBatch {
        tokens: TokenBatch {
            src: io.ints("src", dev),
            values: io.floats("input_values", dev),
            padding: Some(io.mask("src_key_padding_mask", dev)),
            batch_labels,
            dsbn_domain,
            mod_types: None,
            pert_flags: None,
        },
        target: io.floats("target_values", dev),
        masked: io.floats("masked", dev),
        labels: Some(Tensor::from_data(TensorData::new(labels, [s[0]]), dev)),
    }
}

/// Our term names -> the reference's.
fn ref_name(ours: &str) -> &'static str {
    match ours {
        "gep" => "mse",
        "gep_zero" => "zero_nll",
        "gepc" => "gepc",
        "gepc_zero" => "gepc_zero_nll",
        "ecs" => "ecs",
        "cce" => "cce",
        "dar" => "dab",
        "cls" => "cls",
        other => panic!("unknown term {other}"),
    }
}

fn scalar<Bk: Backend>(t: Tensor<Bk, 1>) -> f64 {
    t.into_data().convert::<f64>().into_vec::<f64>().unwrap()[0]
}

fn check_losses(
    case: &str,
    step: &str,
    terms: &[(&'static str, f64, Tensor<B, 1>)],
    total: f64,
    golden: &serde_json::Value,
) {
    let mut seen = 0;
    for (name, _, t) in terms {
        let want = golden[ref_name(name)].as_f64().unwrap();
        let got = scalar(t.clone());
        let tol = 1e-4 * want.abs().max(1.0);
        assert!(
            (got - want).abs() <= tol,
            "{case} {step}: {name} = {got}, scGPT {want}"
        );
        seen += 1;
    }
    let want = golden["total"].as_f64().unwrap();
    assert!(
        (total - want).abs() <= 1e-4 * want.abs().max(1.0),
        "{case} {step}: total {total} vs {want}"
    );
    // Every reference term was computed (nothing silently off).
    let n_ref = golden.as_object().unwrap().len() - 1;
    assert_eq!(
        seen, n_ref,
        "{case}: {seen} terms vs {n_ref} in the reference"
    );
}

/// Gradients or weights of the model as PyTorch-layout host tensors under canonical names.
struct Collect<'a> {
    grads: Option<&'a <B as burn::tensor::backend::AutodiffBackend>::Gradients>,
    out: BTreeMap<String, Vec<f32>>,
}

impl ParamVisitor<B> for Collect<'_> {
    fn param<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<B, D>>, layout: Layout) {
        let t: Tensor<Inner, D> = match self.grads {
            Some(g) => match p.val().grad(g) {
                Some(g) => g,
                None => return,
            },
            None => p.val().inner(),
        };
        let dims = t.dims().to_vec();
        let v: Vec<f32> = t.into_data().convert::<f32>().into_vec().unwrap();
        let v = torch_layout(&v, &(dims, layout));
        self.out.insert(name.to_owned(), v);
    }
}

impl Collect<'_> {
    /// Every parameter of `model` (PyTorch layout, canonical names).
    fn weights(model: &mut ScGpt<B>) -> Self {
        let mut c = Collect {
            grads: None,
            out: BTreeMap::new(),
        };
        visit(model, &mut c);
        c
    }
}

/// The float32 tensors of a reference file under canonical names (integer buffers such
/// as `num_batches_tracked` are skipped).
fn reference_tensors(path: &Path) -> StateDict {
    let io = Io::read(path);
    let named =
        io.0.iter()
            .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
            .map(|(k, (shape, v))| {
                let data = v.iter().map(|&x| x as f32).collect();
                (k.clone(), HostTensor::new(shape.clone(), data).unwrap())
            })
            .collect();
    StateDict::from_named(named).unwrap()
}

fn run_case(case: &str) {
    let dir = fixture(case);
    let t = train_json(&dir);
    let dev = Default::default();
    let files = ModelFiles::open(&dir).unwrap();
    let (mut model, _) = files.build::<B>(&dev).unwrap();
    let obj = objectives(&t);
    let io = Io::read(&dir.join("io.safetensors"));
    let tb = batch::<B>(&io, &dev);

    // Step 0: every loss term.
    let losses = compute_losses(&model, &tb, &obj).unwrap();
    let total0 = scalar(losses.total.clone());
    check_losses(case, "step 0", &losses.terms, total0, &t["losses_step0"]);

    // Gradients of every parameter.
    let grads = losses.total.clone().backward();
    let mut c = Collect {
        grads: Some(&grads),
        out: BTreeMap::new(),
    };
    visit(&mut model, &mut c);
    let ref_grads = reference_tensors(&dir.join("grads.safetensors"));
    let mut compared = 0;
    for (name, got) in &c.out {
        let Some(want) = ref_grads.get(name) else {
            panic!("{case}: the reference has no gradient for {name}");
        };
        let scale = want.data.iter().fold(1f32, |m, x| m.max(x.abs()));
        let diff = got
            .iter()
            .zip(&want.data)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 1e-4 * scale,
            "{case}: gradient of {name} differs by {diff} (largest {scale})"
        );
        compared += 1;
    }
    let ref_with_grad = ref_grads
        .keys()
        .filter(|k| ref_grads.get(k).unwrap().data.iter().any(|&x| x != 0.0))
        .count();
    assert!(
        compared >= ref_with_grad,
        "{case}: compared {compared} gradients, reference has {ref_with_grad} non-zero"
    );
    let norm_want = t["grad_norm_before_clip"].as_f64().unwrap();

    // One clipped Adam step.
    let lr = t["optimizer"]["lr"].as_f64().unwrap();
    let mut adam = Adam::<B>::new(
        AdamConfig {
            eps: t["optimizer"]["eps"].as_f64().unwrap(),
            clip_norm: Some(1.0),
            ..AdamConfig::default()
        },
        Freeze::default(),
    );
    let info = adam.step(&mut model, &grads, lr);
    assert!(
        (info.grad_norm - norm_want).abs() <= 1e-4 * norm_want,
        "{case}: grad norm {} vs {norm_want}",
        info.grad_norm
    );
    for bn in &losses.bn {
        model.update_bn(bn);
    }
    let after = reference_tensors(&dir.join("after_step.safetensors"));
    let c = Collect::weights(&mut model);
    for (name, got) in &c.out {
        let want = after
            .get(name)
            .unwrap_or_else(|| panic!("{case}: no {name}"));
        let g = ref_grads.get(name);
        for (i, (a, b)) in got.iter().zip(&want.data).enumerate() {
            // Entries whose gradient is rounding noise move by up to lr either way
            // (train.json fp64_check); all others must agree closely.
            let noise = g.is_none_or(|g| g.data[i].abs() < 1e-4);
            let tol = if noise { 2.0 * lr as f32 } else { 1e-5 };
            assert!(
                (a - b).abs() <= tol,
                "{case}: {name}[{i}] after the step is {a}, scGPT {b}"
            );
        }
    }

    // Step 1 losses with the updated weights.
    let losses = compute_losses(&model, &tb, &obj).unwrap();
    let total1 = scalar(losses.total.clone());
    check_losses(case, "step 1", &losses.terms, total1, &t["losses_step1"]);
}

#[test]
fn finetune_all_objectives_match_scgpt_step() {
    run_case("finetune_all");
}

#[test]
fn annotation_cls_matches_scgpt_step() {
    run_case("annotation_cls");
}

#[test]
fn dsbn_running_statistics_follow_pytorch() {
    let dir = fixture("finetune_all");
    let t = train_json(&dir);
    let dev = Default::default();
    let files = ModelFiles::open(&dir).unwrap();
    let (mut model, _) = files.build::<B>(&dev).unwrap();
    let io = Io::read(&dir.join("io.safetensors"));
    let tb = batch::<B>(&io, &dev);
    let losses = compute_losses(&model, &tb, &objectives(&t)).unwrap();
    // CCE encodes twice, so scGPT updates the running statistics twice.
    assert_eq!(losses.bn.len(), 2);
    for bn in &losses.bn {
        model.update_bn(bn);
    }
    let stats = reference_tensors(&dir.join("dsbn_stats.safetensors"));
    let c = Collect::weights(&mut model);
    let domain = t["dsbn"]["used_domain"].as_u64().unwrap();
    let mut checked = 0;
    for d in 0..3 {
        for what in ["running_mean", "running_var"] {
            let name = format!("dsbn.bns.{d}.{what}");
            let want = stats
                .get(&format!("after_forward0.{name}"))
                .unwrap_or_else(|| panic!("no {name}"));
            let got = &c.out[&name];
            let diff = got
                .iter()
                .zip(&want.data)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff <= 1e-4, "{name}: {diff}");
            if d as u64 == domain {
                let init = stats.get(&format!("init.{name}")).unwrap();
                assert!(
                    init.data.iter().zip(&want.data).any(|(a, b)| a != b),
                    "the used domain's statistics must move"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2);
}

// ---------------------------------------------------------------------------------------
// Finite differences
// ---------------------------------------------------------------------------------------

fn tiny_config() -> ModelConfig {
    ModelConfig {
        kind: ModelKind::Transformer,
        ntoken: 20,
        d_model: 8,
        nhead: 2,
        d_hid: 12,
        nlayers: 2,
        nlayers_cls: 3,
        n_cls: Some(3),
        dropout: 0.0,
        pad_token: "<pad>".into(),
        pad_value: -2.0,
        mask_value: -1.0,
        n_bins: 51,
        max_seq_len: 16,
        input_emb_style: cellforge_core::model::InputEmbStyle::Continuous,
        n_input_bins: None,
        cell_emb_style: cellforge_core::model::CellEmbStyle::Cls,
        mvc: Some(MvcStyle::InnerProduct),
        explicit_zero_prob: true,
        input_norm: InputNorm::Dsbn { num_domains: 2 },
        num_batch_labels: Some(2),
        dab_classes: Some(2),
        pre_norm: false,
        generative: false,
        ecs_threshold: 0.3,
    }
}

fn tiny_batch<Bk: Backend>(dev: &Bk::Device) -> TrainBatch<Bk> {
    let (b, l) = (4usize, 6usize);
    let src: Vec<i64> = (0..b * l)
        .map(|i| {
            if i % l == 5 && i / l == 3 {
                19
            } else {
                (i * 7 % 17) as i64
            }
        })
        .collect();
    let pad: Vec<bool> = src.iter().map(|&s| s == 19).collect();
    let target: Vec<f32> = (0..b * l).map(|i| ((i * 5) % 7) as f32).collect();
    let masked: Vec<f32> = (0..b * l)
        .map(|i| if i % 3 == 1 && !pad[i] { 1.0 } else { 0.0 })
        .collect();
    let input: Vec<f32> = target
        .iter()
        .zip(&masked)
        .map(|(&t, &m)| if m > 0.0 { -1.0 } else { t })
        .collect();
    let i1 = |v: Vec<i64>| Tensor::<Bk, 1, Int>::from_data(TensorData::new(v, [b]), dev);
    TrainBatch {
        tokens: TokenBatch {
            src: Tensor::from_data(TensorData::new(src, [b, l]), dev),
            values: Tensor::from_data(TensorData::new(input, [b, l]), dev),
            padding: Some(Tensor::from_data(TensorData::new(pad, [b, l]), dev)),
            batch_labels: Some(i1(vec![0, 1, 1, 0])),
            dsbn_domain: Some(1),
            mod_types: None,
            pert_flags: None,
        },
        target: Tensor::from_data(TensorData::new(target, [b, l]), dev),
        masked: Tensor::from_data(TensorData::new(masked, [b, l]), dev),
        labels: Some(i1(vec![2, 0, 1, 2])),
    }
}

/// Adds `eps * direction[name]` to every parameter (the direction is drawn per name).
struct Shift<'a> {
    dir: &'a BTreeMap<String, Vec<f32>>,
    eps: f32,
}

impl<Bk: Backend> ParamVisitor<Bk> for Shift<'_> {
    fn param<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<Bk, D>>, _: Layout) {
        if name.contains("running_") {
            return;
        }
        let dims = p.dims();
        let u = &self.dir[name];
        let delta = Tensor::<Bk, 1>::from_data(
            TensorData::new(
                u.iter().map(|x| x * self.eps).collect::<Vec<_>>(),
                [u.len()],
            ),
            &p.device(),
        )
        .reshape(dims);
        let id = p.id;
        *p = Param::initialized(id, p.val() + delta);
    }
}

/// Draws a random unit-scale direction for every parameter.
struct Direction {
    out: BTreeMap<String, Vec<f32>>,
}

impl<Bk: Backend> ParamVisitor<Bk> for Direction {
    fn param<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<Bk, D>>, _: Layout) {
        let n: usize = p.dims().iter().product();
        let r =
            Tensor::<Inner, 1>::random([n], Distribution::Normal(0.0, 1.0), &Default::default());
        self.out.insert(
            name.to_owned(),
            r.into_data().convert::<f32>().into_vec().unwrap(),
        );
    }
}

fn single(name: &str) -> Objectives {
    let mut o = Objectives {
        gep: 0.0,
        gepc: 0.0,
        ecs: 0.0,
        ecs_threshold: 0.3,
        dar: 0.0,
        cls: 0.0,
        cce: 0.0,
        class_weights: Vec::new(),
    };
    match name {
        "gep" => o.gep = 1.0,
        "gepc" => o.gepc = 1.0,
        "ecs" => o.ecs = 1.0,
        "dar" => o.dar = 1.0,
        "cls" => o.cls = 1.0,
        "cce" => o.cce = 1.0,
        _ => unreachable!(),
    }
    o
}

/// `<autodiff gradient, u>` and the central finite difference of the loss along `u`
/// (`u` zero outside the parameters `keep` accepts).
fn directional(
    model: &mut ScGpt<B>,
    dir: &BTreeMap<String, Vec<f32>>,
    keep: &dyn Fn(&str) -> bool,
    obj: &Objectives,
    tb: &TrainBatch<B>,
) -> (f64, f64) {
    let dir: BTreeMap<String, Vec<f32>> = dir
        .iter()
        .map(|(k, v)| {
            let v = if keep(k) {
                v.clone()
            } else {
                vec![0.0; v.len()]
            };
            (k.clone(), v)
        })
        .collect();
    let losses = compute_losses(model, tb, obj).unwrap();
    let grads = losses.total.backward();
    let mut c = Collect {
        grads: Some(&grads),
        out: BTreeMap::new(),
    };
    visit(model, &mut c);
    let mut shapes = BTreeMap::new();
    visit(model, &mut ShapeOf { out: &mut shapes });
    // Collect hands out PyTorch layout; bring u to the same layout.
    let analytic: f64 = c
        .out
        .iter()
        .map(|(k, g)| {
            let u = torch_layout(&dir[k], &shapes[k]);
            g.iter()
                .zip(&u)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum::<f64>()
        })
        .sum();
    let inner = model.valid();
    let dev = Default::default();
    let eval = |eps: f32| {
        let mut m = inner.clone();
        visit(&mut m, &mut Shift { dir: &dir, eps });
        // Evaluate in training mode (DSBN batch statistics) like the gradient.
        let mut ad = ScGpt::<B>::init(&tiny_config(), &dev);
        copy_into(&mut m, &mut ad);
        scalar(compute_losses(&ad, tb, obj).unwrap().total)
    };
    // Small steps: ReLU kinks make larger ones biased.
    let eps = 1e-4f32;
    let numeric = (eval(eps) - eval(-eps)) / (2.0 * f64::from(eps));
    (analytic, numeric)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-2 * a.abs().max(b.abs()) + 2e-3
}

#[test]
fn gradients_of_every_objective_match_finite_differences() {
    Inner::seed(&Default::default(), 7);
    let dev = Default::default();
    let mut model = ScGpt::<B>::init(&tiny_config(), &dev);
    let mut dir = Direction {
        out: BTreeMap::new(),
    };
    visit(&mut model, &mut dir);
    let dir = dir.out;
    let tb = tiny_batch::<B>(&dev);
    let all = |_: &str| true;
    for name in ["gep", "gepc", "ecs", "cls", "cce"] {
        let (analytic, numeric) = directional(&mut model, &dir, &all, &single(name), &tb);
        assert!(
            close(analytic, numeric),
            "{name}: finite differences {numeric} vs autodiff {analytic}"
        );
        assert!(
            analytic.abs() > 1e-2,
            "{name}: the check needs a non-trivial gradient"
        );
    }
    // DAR: the discriminator descends its loss; everything before the gradient reversal
    // ascends it, so there autodiff must give exactly minus the finite difference.
    let disc = |k: &str| k.starts_with("grad_reverse_discriminator");
    let rest = |k: &str| !k.starts_with("grad_reverse_discriminator");
    let (a, n) = directional(&mut model, &dir, &disc, &single("dar"), &tb);
    assert!(close(a, n), "dar, discriminator: {n} vs {a}");
    let (a, n) = directional(&mut model, &dir, &rest, &single("dar"), &tb);
    assert!(close(a, -n), "dar, encoder: autodiff {a} must be minus {n}");
    assert!(a.abs() > 1e-2);
}

struct ShapeOf<'a> {
    out: &'a mut BTreeMap<String, (Vec<usize>, Layout)>,
}

impl<Bk: Backend> ParamVisitor<Bk> for ShapeOf<'_> {
    fn param<const D: usize>(&mut self, name: &str, p: &mut Param<Tensor<Bk, D>>, l: Layout) {
        self.out.insert(name.to_owned(), (p.dims().to_vec(), l));
    }
}

fn torch_layout(u: &[f32], shape: &(Vec<usize>, Layout)) -> Vec<f32> {
    let (dims, layout) = shape;
    if *layout == Layout::Transposed && dims.len() == 2 {
        HostTensor::new(dims.clone(), u.to_vec())
            .unwrap()
            .transposed()
            .data
    } else {
        u.to_vec()
    }
}

/// Copies every parameter of `from` (plain backend) into `to` (autodiff backend).
fn copy_into(from: &mut ScGpt<Inner>, to: &mut ScGpt<B>) {
    let named = cellforge_core::model::weights::named_tensors(from).unwrap();
    let sd = StateDict::from_named(named).unwrap();
    cellforge_core::model::weights::load_into(to, &sd, &Default::default()).unwrap();
}

#[test]
fn gradient_reversal_flips_the_sign_exactly() {
    let dev = Default::default();
    let x = Tensor::<B, 2>::random([3, 4], Distribution::Normal(0.0, 1.0), &dev).require_grad();
    let c = Tensor::<B, 2>::random([3, 4], Distribution::Normal(0.0, 1.0), &dev);
    let y = cellforge_core::model::net::grad_reverse(x.clone(), 1.0);
    let host =
        |t: Tensor<Inner, 2>| -> Vec<f32> { t.into_data().convert::<f32>().into_vec().unwrap() };
    // Forward: the identity, bit for bit.
    assert_eq!(host(x.clone().inner()), host(y.clone().inner()));
    let grads = (y * c.clone()).sum().backward();
    let g = host(x.grad(&grads).unwrap());
    let neg: Vec<f32> = host(c.inner()).iter().map(|v| -v).collect();
    assert_eq!(g, neg, "the gradient must be exactly -c");
}
