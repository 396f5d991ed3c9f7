#![allow(clippy::unwrap_used, clippy::print_stdout)]
use tunnox_sim_tests::scenario::{ScenarioConfig, run};

#[test]
fn smoke() {
    let mut failures = 0;
    for seed in tunnox_sim_tests::scenario::seeds(0u64..30) { let t = std::time::Instant::now();
        let c = ScenarioConfig::small(seed);
        match run(&c) {
            Ok(r) => println!("{}wall {:?}", r.summary(), t.elapsed()),
            Err(f) => { failures += 1; let s = f.to_string(); println!("FAILED seed {seed}: {}", &s[..s.len().min(3000)]); }
        }
    }
    assert_eq!(failures, 0);
}
