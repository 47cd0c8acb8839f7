//! Configs: every file under configs/ parses and validates; unknown keys, bad values and bad
//! overrides are rejected with the section / field named; overrides and round trips work.

use std::path::{Path, PathBuf};

use viewcraft::config::{Config, LinearEvalConfig, MethodCfg};

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            toml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

#[test]
fn every_shipped_config_parses_and_validates() {
    let mut files = Vec::new();
    toml_files(&configs(), &mut files);
    assert!(files.len() >= 20, "{files:?}");
    let mut methods = std::collections::BTreeSet::new();
    for f in &files {
        if f.parent().unwrap().ends_with("linear") {
            let c = LinearEvalConfig::load(Some(f), &[], None)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(c.linear.epochs > 0);
        } else {
            let c = Config::load(Some(f), &[]).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            methods.insert((c.data.dataset.clone(), c.method.name(), c.crop.kind.clone()));
        }
    }
    for ds in ["cifar10", "cifar100", "stl10"] {
        for m in ["simclr", "moco", "byol", "simsiam"] {
            for k in ["ccrop", "rcrop", "semanticcrop", "objectcrop"] {
                assert!(
                    methods.contains(&(ds.to_string(), m, k.to_string())),
                    "no {ds} {m} {k} config"
                );
            }
        }
    }
}

#[test]
fn paper_configs_hold_the_reference_values() {
    let c = Config::load(Some(&configs().join("cifar10/simclr_ccrop.toml")), &[]).unwrap();
    assert_eq!(
        (
            c.train.epochs,
            c.train.batch_size,
            c.train.lr,
            c.train.decay_rate
        ),
        (500, 512, 0.5, 0.1)
    );
    assert_eq!((c.crop.warmup_epochs, c.crop.loc_interval), (100, 100));
    assert_eq!((c.crop.alpha, c.crop.box_thresh), (0.1, 0.1));
    let MethodCfg::Simclr(m) = &c.method else {
        panic!("not simclr")
    };
    assert_eq!(
        m.loss_scale,
        Some(0.5 / 0.07),
        "resolved: the value in effect"
    );
    let r = Config::load(Some(&configs().join("cifar10/simclr_rcrop.toml")), &[]).unwrap();
    assert_eq!(r.crop.kind, "rcrop");
    let s = Config::load(Some(&configs().join("cifar10/simsiam_ccrop.toml")), &[]).unwrap();
    assert!(s.model.zero_init_residual);
    let l =
        LinearEvalConfig::load(Some(&configs().join("linear/cifar10.toml")), &[], None).unwrap();
    assert_eq!(
        (l.linear.epochs, l.linear.lr, l.linear.milestones.clone()),
        (100, 10.0, vec![60, 80])
    );
    assert_eq!(l.linear.weight_decay, 0.0);
}

fn write(name: &str, text: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("viewcraft-config-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn err(text: &str, sets: &[&str]) -> String {
    let p = write("bad.toml", text);
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::load(Some(&p), &sets).unwrap_err().to_string()
}

#[test]
fn unknown_keys_and_sections_are_rejected_by_name() {
    let e = err("[train]\nepoch = 5\n", &[]);
    assert!(
        e.contains("[train]") && e.contains("epoch") && e.contains("epochs"),
        "{e}"
    );
    let e = err("[trian]\nepochs = 5\n", &[]);
    assert!(e.contains("trian") && e.contains("sections"), "{e}");
    // A field of another method.
    let e = err("[method]\nname = \"simclr\"\nqueue = 4096\n", &[]);
    assert!(e.contains("[method]") && e.contains("queue"), "{e}");
    let e = err("[method]\nname = \"dino\"\n", &[]);
    assert!(e.contains("dino") && e.contains("simclr"), "{e}");
    let e = err("[train]\nepochs = \"many\"\n", &[]);
    assert!(e.contains("[train]"), "{e}");
    let e = err("[train\nepochs = 1\n", &[]);
    assert!(e.contains("bad.toml") && e.contains("TOML"), "{e}");
}

#[test]
fn out_of_range_values_name_the_field_and_the_allowed_values() {
    for (set, field, words) in [
        ("crop.box_thresh=1.5", "crop.box_thresh", "(0, 1)"),
        ("crop.box_thresh=0", "crop.box_thresh", "(0, 1)"),
        ("crop.alpha=0", "crop.alpha", "> 0"),
        ("crop.alpha=-1", "crop.alpha", "> 0"),
        ("crop.kind=fancy", "crop.kind", "rcrop, ccrop, simccrop"),
        ("model.arch=resnet99", "model.arch", "resnet18"),
        ("model.stem=tiny", "model.stem", "imagenet"),
        ("train.epochs=0", "train.epochs", "at least 1"),
        ("train.lr=-0.1", "train.lr", "> 0"),
        ("train.batch_size=1", "train.batch_size", "at least 2"),
        ("train.momentum=1.5", "train.momentum", "[0, 1)"),
        ("crop.scale=[0.5, 0.2]", "crop.scale", "min ≤ max"),
        ("data.dataset=imagenet", "data.dataset", "cifar10"),
        ("knn.k=0", "knn.k", "at least 1"),
        (
            "linear.milestones=[80, 60]",
            "linear.milestones",
            "increasing",
        ),
    ] {
        let e = err("", &[set]);
        assert!(e.contains(field) && e.contains(words), "{set}: {e}");
    }
    let e = err(
        "[method]\nname = \"moco\"\nqueue = 1000\n[train]\nbatch_size = 512\n",
        &[],
    );
    assert!(e.contains("method.queue") && e.contains("multiple"), "{e}");
}

#[test]
fn overrides_apply_to_any_field_and_bad_ones_are_named() {
    let p = configs().join("quickstart.toml");
    let sets: Vec<String> = [
        "train.epochs=7",
        "method.name=moco",
        "method.queue=1024",
        "crop.kind=rcrop",
        "data.root=\"/some/where\"",
        "linear.milestones=[3, 5]",
        "model.arch=resnet34",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let c = Config::load(Some(&p), &sets).unwrap();
    assert_eq!(c.train.epochs, 7);
    assert_eq!(c.crop.kind, "rcrop");
    assert_eq!(c.data.root, "/some/where");
    assert_eq!(c.linear.milestones, vec![3, 5]);
    assert_eq!(c.model.arch, "resnet34");
    let MethodCfg::Moco(m) = &c.method else {
        panic!("not moco")
    };
    assert_eq!(m.queue, 1024);
    // Bare strings need no quotes.
    let c = Config::load(Some(&p), &["crop.kind=simccrop".into()]).unwrap();
    assert_eq!(c.init_box(), [0.25, 0.25, 0.75, 0.75]);
    for bad in ["train.epochs", "epochs=3", "train..x=1", "train.nope=1"] {
        let e = Config::load(Some(&p), &[bad.into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("train") || e.contains("epochs"), "{bad}: {e}");
    }
}

#[test]
fn resolved_config_round_trips() {
    let c = Config::load(
        Some(&configs().join("cifar10/byol_ccrop.toml")),
        &["train.epochs=3".into()],
    )
    .unwrap();
    let back = Config::from_toml(&c.to_toml(), "round trip").unwrap();
    assert_eq!(c, back);
    let q = Config::load(None, &[]).unwrap();
    assert_eq!(q.model.width, 16);
    assert_eq!(q.method.name(), "simclr");
}

/// SimCLR's loss factor follows the temperature (τ / 0.07) unless set, and the resolved config
/// (a run's `config.toml`, a checkpoint's metadata) records the value in effect.
#[test]
fn simclr_loss_scale_follows_the_temperature() {
    let scale = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let c = Config::load(Some(&configs().join("cifar10/simclr_ccrop.toml")), &sets).unwrap();
        let MethodCfg::Simclr(m) = &c.method else {
            panic!("not simclr")
        };
        let text = c.to_toml();
        let written = Config::from_toml(&text, "resolved").unwrap();
        assert_eq!(written, c, "resolved config round-trips");
        assert!(
            text.contains("loss_scale"),
            "value in effect recorded:\n{text}"
        );
        m.loss_scale.unwrap()
    };
    assert!((scale(&[]) - 0.5 / 0.07).abs() < 1e-6);
    assert!((scale(&["method.temperature=0.2"]) - 0.2 / 0.07).abs() < 1e-6);
    assert_eq!(
        scale(&["method.temperature=0.2", "method.loss_scale=1.0"]),
        1.0,
        "an explicit value wins"
    );
    // No shipped config pins the factor: each follows its own temperature.
    let mut files = Vec::new();
    toml_files(&configs(), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text
                .lines()
                .any(|l| l.trim_start().starts_with("loss_scale")),
            "{} sets loss_scale explicitly",
            f.display()
        );
    }
}

/// `linear.feature_norm`: an unknown value is rejected naming the field and the allowed
/// values (pretrain and linear-eval configs); the paper's linear-eval configs keep the raw
/// features (SPEC A.6), the quickstart and the default standardise.
#[test]
fn linear_feature_norm_is_validated_and_set_per_protocol() {
    let e = err("", &["linear.feature_norm=whiten"]);
    assert!(
        e.contains("linear.feature_norm")
            && e.contains("whiten")
            && e.contains("none, standardize"),
        "{e}"
    );
    let e = LinearEvalConfig::load(None, &["linear.feature_norm=bn".into()], None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("linear.feature_norm") && e.contains("none, standardize"),
        "{e}"
    );
    for name in ["cifar10", "cifar10-subset", "cifar100", "stl10"] {
        let f = configs().join(format!("linear/{name}.toml"));
        let c = LinearEvalConfig::load(Some(&f), &[], None).unwrap();
        assert_eq!(c.linear.feature_norm, "none", "{name}");
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.contains("feature_norm = \"none\""),
            "{name}: not explicit"
        );
    }
    assert_eq!(
        Config::load(None, &[]).unwrap().linear.feature_norm,
        "standardize"
    );
    let d = LinearEvalConfig::load(None, &[], None).unwrap();
    assert_eq!(d.linear.feature_norm, "standardize");
}

#[test]
fn view_specs_parse_with_defaults_and_bad_ones_name_the_field() {
    use viewcraft::data::loader::{Augment, CropSource};
    let c = Config::from_toml(
        r#"
[crop]
scale = [0.3, 1.0]

[[views]]
crop = "box"

[[views]]
crop = "scene"
size = 24
scale = [0.05, 0.4]
augment = "flip"
"#,
        "inline",
    )
    .unwrap();
    c.validate().unwrap();
    let v = c.view_specs(32);
    assert_eq!(v.len(), 2);
    assert_eq!(
        (v[0].source, v[0].size, v[0].rrc.scale),
        (CropSource::Box, 32, (0.3, 1.0))
    );
    assert_eq!(
        (v[1].source, v[1].size, v[1].rrc.scale, v[1].augment),
        (CropSource::Scene, 24, (0.05, 0.4), Augment::Flip)
    );
    // The resolved config round-trips with its views.
    let back = Config::from_toml(&c.to_toml(), "round trip").unwrap();
    assert_eq!(back.views, c.views);
    let c = Config::from_toml("[[views]]\ncount = 2\n", "inline").unwrap();
    assert_eq!(c.view_specs(32).len(), 2);
    for (text, field) in [
        ("[[views]]\ncrop = \"box\"\ncount = 3\n", "views"),
        ("[[views]]\ncrop = \"nope\"\ncount = 2\n", "views[0].crop"),
        ("[[views]]\ncrop = \"object\"\ncount = 2\n", "views[0].crop"),
        (
            "[crop]\nkind = \"objectcrop\"\n[[views]]\ncount = 2\n",
            "views[0].crop",
        ),
        (
            "[[views]]\naugment = \"stronger\"\ncount = 2\n",
            "views[0].augment",
        ),
        ("[[views]]\nsize = 0\ncount = 2\n", "views[0].size"),
        (
            "[[views]]\nscale = [0.5, 0.2]\ncount = 2\n",
            "views[0].scale",
        ),
        (
            "[crop]\nkind = \"objectcrop\"\ndilation_mode = \"x\"\n",
            "crop.dilation_mode",
        ),
        (
            "[crop]\nkind = \"semanticcrop\"\nsuppress_sigma = 0\n",
            "crop.suppress_sigma",
        ),
        ("[crop]\nmax_proposals = 0\n", "crop.max_proposals"),
        ("[crop]\nkind = \"boxes\"\n", "crop.kind"),
    ] {
        let e = Config::from_toml(text, "inline")
            .and_then(|c| c.validate())
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{text}: {e}");
    }
    let e = Config::from_toml("[[views]]\nsizes = 3\n", "inline")
        .unwrap_err()
        .to_string();
    assert!(e.contains("sizes") && e.contains("views"), "{e}");
}
