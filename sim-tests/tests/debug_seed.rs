#![allow(clippy::print_stdout)]
#[test]
#[ignore]
fn debug_seed() {
    let seed = std::env::var("SEED")
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);
    let bytewise = std::env::var("BYTEWISE").is_ok();
    let mut c = tunnox_sim_tests::scenario::ScenarioConfig::small(seed);
    c.trace = true;
    if bytewise {
        c.bytewise = true;
        c.max_bytes = 2048;
        c.connections_per_visitor = 10;
    }
    if let Err(f) = tunnox_sim_tests::scenario::run(&c) {
        println!("{f}");
    }
}
