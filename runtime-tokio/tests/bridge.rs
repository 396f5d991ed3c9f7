//! Bridge links over tonic on loopback: the hello each way, bytes both ways, and mutual TLS —
//! a peer with a certificate from another CA, with a certificate for another name, or without
//! TLS gets no link.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tunnox_runtime_tokio::bridge::{BridgeLink, BridgeService, BridgeTls, LinkHello, dial, serve};

const PATIENCE: Duration = Duration::from_secs(10);

fn tcp() -> std::sync::Arc<dyn tunnox_runtime_tokio::net::Net> {
    std::sync::Arc::new(tunnox_runtime_tokio::net::TokioNet)
}

fn hello(name: &str, epoch: u64) -> LinkHello {
    LinkHello {
        node_id: name.to_owned(),
        epoch,
    }
}

/// A CA, and a function issuing node identities under it for the given names.
struct Ca {
    pem: String,
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { pem, params, key }
    }

    fn node(&self, names: &[&str]) -> BridgeTls {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        BridgeTls::from_pem(
            cert.pem().into_bytes(),
            key.serialize_pem().into_bytes(),
            self.pem.clone().into_bytes(),
        )
    }
}

/// Serves a bridge as `n2`; returns its address and where its accepted links arrive.
async fn bridge(tls: Option<BridgeTls>) -> (String, mpsc::Receiver<BridgeLink>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, accepted) = mpsc::channel(4);
    let service = BridgeService::new(hello("n2", 22), tx);
    tokio::spawn(serve(listener, service, tls));
    (addr, accepted)
}

async fn carries_bytes_both_ways(dialled: BridgeLink, accepted: &mut mpsc::Receiver<BridgeLink>) {
    let accepted = tokio::time::timeout(PATIENCE, accepted.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dialled.peer, hello("n2", 22));
    assert_eq!(accepted.peer, hello("n1", 11));
    let (mut a, mut b) = (dialled.stream, accepted.stream);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        a.write_all(&sent).await.unwrap();
        let mut back = vec![0u8; 5];
        a.read_exact(&mut back).await.unwrap();
        back
    });
    let mut got = vec![0u8; data.len()];
    tokio::time::timeout(PATIENCE, b.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got == data, "bytes through the link differ");
    b.write_all(b"reply").await.unwrap();
    assert_eq!(writer.await.unwrap(), b"reply");
}

#[tokio::test]
async fn a_plaintext_link_introduces_both_ends_and_carries_bytes_both_ways() {
    let (addr, mut accepted) = bridge(None).await;
    let link = dial(&tcp(), &addr, &hello("n1", 11), PATIENCE, None)
        .await
        .unwrap();
    carries_bytes_both_ways(link, &mut accepted).await;
}

#[tokio::test]
async fn a_mutual_tls_link_between_nodes_of_one_ca_carries_bytes() {
    let ca = Ca::new();
    let (addr, mut accepted) = bridge(Some(ca.node(&["127.0.0.1"]))).await;
    let mine = ca.node(&["127.0.0.1"]);
    mine.check().unwrap();
    let link = dial(&tcp(), &addr, &hello("n1", 11), PATIENCE, Some(&mine))
        .await
        .unwrap();
    carries_bytes_both_ways(link, &mut accepted).await;
}

/// A dial that must not produce a link: it fails, or the server never hands one over.
async fn no_link(addr: &str, tls: Option<&BridgeTls>, accepted: &mut mpsc::Receiver<BridgeLink>) {
    let dialled = dial(&tcp(), addr, &hello("n1", 11), Duration::from_secs(3), tls).await;
    assert!(
        dialled.is_err(),
        "a link was made: {:?}",
        dialled.map(|l| l.peer)
    );
    let handed = tokio::time::timeout(Duration::from_millis(300), accepted.recv()).await;
    assert!(handed.is_err(), "the server accepted a link");
}

#[tokio::test]
async fn peers_outside_the_cluster_ca_or_without_tls_get_no_link() {
    let ca = Ca::new();
    let (addr, mut accepted) = bridge(Some(ca.node(&["127.0.0.1"]))).await;
    // A client certificate from another CA (which also does not trust the server).
    let foreign = Ca::new().node(&["127.0.0.1"]);
    no_link(&addr, Some(&foreign), &mut accepted).await;
    // The right CA, but the server's certificate names another host than the one dialled.
    let (misnamed_addr, mut misnamed_accepted) = bridge(Some(ca.node(&["other.test"]))).await;
    no_link(
        &misnamed_addr,
        Some(&ca.node(&["127.0.0.1"])),
        &mut misnamed_accepted,
    )
    .await;
    // No TLS at all against a TLS bridge.
    no_link(&addr, None, &mut accepted).await;
}

#[tokio::test]
async fn unusable_tls_files_are_an_error_before_anything_serves() {
    let ca = Ca::new();
    let good = ca.node(&["127.0.0.1"]);
    let broken = BridgeTls::from_pem(
        b"not a cert".to_vec(),
        b"not a key".to_vec(),
        ca.pem.clone().into_bytes(),
    );
    assert!(broken.check().is_err());
    assert!(good.check().is_ok());
    let missing = BridgeTls::from_files(
        std::path::Path::new("/nonexistent/cert.pem"),
        std::path::Path::new("/nonexistent/key.pem"),
        std::path::Path::new("/nonexistent/ca.pem"),
    );
    let err = missing.unwrap_err().to_string();
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}
