//! Simulated hosts: the node (with its cluster coordinator), client agents, target services,
//! visitors and post-heal probes, and the cluster's storage and broker.

pub mod agent;
pub mod broker;
pub mod codes;
pub mod coordinator;
pub mod frames;
pub mod node;
pub mod pattern;
pub mod probe;
pub mod service;
pub mod storage;
pub mod visitor;
