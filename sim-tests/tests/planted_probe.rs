#![allow(clippy::unwrap_used, clippy::print_stdout)]
use tunnox_core::planted::PlantedBug;
use tunnox_sim_tests::scenario::{ScenarioConfig, run};

#[test]
fn probe() {
    for bug in PlantedBug::ALL {
        let mut caught = Vec::new();
        for seed in 0u64..40 {
            let mut c = ScenarioConfig::small(seed);
            c.planted = Some(bug);
            if let Err(f) = run(&c) {
                let s = f.error.to_string();
                caught.push((seed, s[..s.len().min(150)].to_string()));
            }
        }
        println!("{bug:?}: caught at {} of 40 seeds", caught.len());
        for (seed, e) in caught.iter().take(3) { println!("   seed {seed}: {e}"); }
    }
}
