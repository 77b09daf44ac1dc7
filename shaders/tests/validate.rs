//! Every shader must parse and validate with naga (no GPU needed), and the Rust mirrors must
//! have the sizes the WGSL structs have.

#[test]
fn all_shaders_validate() {
    for (name, source) in cellforge_shaders::ALL {
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}: parse error:\n{}", e.emit_to_string(source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: validation error: {e:?}"));
        assert!(
            module.entry_points.len() >= 2,
            "{name}: expected a vertex and a fragment entry point"
        );
    }
}

#[test]
fn uniform_layout_matches_wgsl() {
    let module = naga::front::wgsl::parse_str(cellforge_shaders::SCATTER_WGSL).expect("parses");
    let uniforms = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some("Uniforms"))
        .map(|(h, _)| h)
        .expect("Uniforms struct");
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).expect("layout");
    assert_eq!(
        layouter[uniforms].size as usize,
        std::mem::size_of::<cellforge_shaders::ScatterUniforms>()
    );
    assert_eq!(std::mem::size_of::<cellforge_shaders::ScatterPoint>(), 24);
}
