//! Simulated hosts: the node, client agents, target services and visitors.

pub mod agent;
pub mod codes;
pub mod node;
pub mod pattern;
pub mod service;
pub mod visitor;
