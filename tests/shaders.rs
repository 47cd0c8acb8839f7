//! Every shaders/*.wgsl parses and validates with naga (prelude included), and every file in
//! shaders/ is registered (no orphan kernels). No GPU needed.

use viewcraft::gpu::shaders;

#[test]
fn every_shader_validates() {
    for (name, _) in shaders::ALL {
        let src = shaders::full_source(name).unwrap();
        if let Err(e) = shaders::validate(name, &src) {
            panic!("{e}");
        }
    }
}

#[test]
fn every_file_is_registered() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(stem) = name.strip_suffix(".wgsl") else {
            continue;
        };
        assert!(
            stem == "prelude" || shaders::ALL.iter().any(|(n, _)| *n == stem),
            "shaders/{name} is not in gpu::shaders::ALL"
        );
    }
}

#[test]
fn a_broken_shader_is_reported_with_its_name() {
    let e = shaders::validate("broken", "fn f() -> f32 { return x; }").unwrap_err();
    assert!(e.contains("broken.wgsl"), "{e}");
}
