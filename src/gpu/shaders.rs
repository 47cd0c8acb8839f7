//! Every WGSL source, embedded at build time. Each file is compiled with the shared prelude
//! in front of it (helpers only; no bindings live in the prelude).

pub const PRELUDE: &str = include_str!("../../shaders/prelude.wgsl");

/// (name, source) of every shader file under `shaders/`, prelude excluded.
pub const ALL: &[(&str, &str)] = &[
    (
        "elementwise",
        include_str!("../../shaders/elementwise.wgsl"),
    ),
    ("reduce", include_str!("../../shaders/reduce.wgsl")),
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    ("gemm", include_str!("../../shaders/gemm.wgsl")),
    ("conv2d", include_str!("../../shaders/conv2d.wgsl")),
    ("batchnorm", include_str!("../../shaders/batchnorm.wgsl")),
    ("pool", include_str!("../../shaders/pool.wgsl")),
    ("l2norm", include_str!("../../shaders/l2norm.wgsl")),
    (
        "cross_entropy",
        include_str!("../../shaders/cross_entropy.wgsl"),
    ),
    ("optim", include_str!("../../shaders/optim.wgsl")),
    ("lars", include_str!("../../shaders/lars.wgsl")),
    ("info_nce", include_str!("../../shaders/info_nce.wgsl")),
    ("ddm", include_str!("../../shaders/ddm.wgsl")),
    (
        "saliency_mask",
        include_str!("../../shaders/saliency_mask.wgsl"),
    ),
    (
        "heatmap_box",
        include_str!("../../shaders/heatmap_box.wgsl"),
    ),
];

/// The full source of shader `name` (prelude + file).
pub fn full_source(name: &str) -> Option<String> {
    ALL.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, src)| format!("{PRELUDE}\n{src}"))
}

/// Parse and validate one full source with naga; the error text names the shader.
pub fn validate(name: &str, src: &str) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
    let module = naga::front::wgsl::parse_str(src)
        .map_err(|e| format!("{name}.wgsl: {}", e.emit_to_string(src)))?;
    // Subgroup operations are allowed here; wgpu checks them against the device's features
    // when a pipeline is built (no kernel uses them today).
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default() | naga::valid::Capabilities::SUBGROUP,
    )
    .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
    .subgroup_operations(naga::valid::SubgroupOperationSet::all())
    .validate(&module)
    .map_err(|e| format!("{name}.wgsl: {}", e.emit_to_string(src)))?;
    Ok((module, info))
}
