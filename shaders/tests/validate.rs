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
    assert_eq!(
        std::mem::size_of::<cellforge_shaders::ScatterUniforms>(),
        48
    );
}

#[test]
fn scatter_vertex_inputs_are_position_and_colour() {
    let module = naga::front::wgsl::parse_str(cellforge_shaders::SCATTER_WGSL).expect("parses");
    let vs = module
        .entry_points
        .iter()
        .find(|e| e.stage == naga::ShaderStage::Vertex)
        .expect("vertex entry point");
    let mut locations: Vec<(u32, String)> = Vec::new();
    for arg in &vs.function.arguments {
        let mut visit = |binding: &Option<naga::Binding>, ty: naga::Handle<naga::Type>| {
            if let Some(naga::Binding::Location { location, .. }) = binding {
                locations.push((*location, format!("{:?}", module.types[ty].inner)));
            }
        };
        visit(&arg.binding, arg.ty);
        if let naga::TypeInner::Struct { members, .. } = &module.types[arg.ty].inner {
            for m in members {
                visit(&m.binding, m.ty);
            }
        }
    }
    locations.sort();
    let layouts = cellforge_shaders::scatter_vertex_layouts();
    assert_eq!(locations.len(), 2, "{locations:?}");
    // location 0: vec2<f32> from Float32x2; location 1: vec4<f32> from Unorm8x4
    assert!(
        locations[0].1.contains("Bi") && locations[0].0 == 0,
        "{locations:?}"
    );
    assert!(
        locations[1].1.contains("Quad") && locations[1].0 == 1,
        "{locations:?}"
    );
    assert_eq!(
        layouts[0].attributes[0].format,
        wgpu::VertexFormat::Float32x2
    );
    assert_eq!(
        layouts[1].attributes[0].format,
        wgpu::VertexFormat::Unorm8x4
    );
}
