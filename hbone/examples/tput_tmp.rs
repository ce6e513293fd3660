// TEMPORARY measurement harness; deleted before hand-off.
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let flavor = std::env::args().nth(1).unwrap_or_default();
    let rt = if flavor == "ct" {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    };
    rt.block_on(run());
}

async fn run() {
    const TOTAL: usize = 2 << 30;
    let ca = DevCa::generate("cluster.local").unwrap();
    let bundle = ca.trust_bundle();
    let scert = ca.issue(&Identity::new("cluster.local", "d", "server"), Duration::from_secs(3600)).unwrap();
    let ccert = ca.issue(&Identity::new("cluster.local", "d", "client"), Duration::from_secs(3600)).unwrap();
    // sink backend
    let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = sink.accept().await.unwrap();
        if std::env::args().nth(2).as_deref() == Some("down") {
            let buf = vec![9u8; 256 << 10];
            let mut sent = 0;
            while sent < TOTAL { s.write_all(&buf).await.unwrap(); sent += buf.len(); }
            s.shutdown().await.unwrap();
        }
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0usize;
        loop { let r = s.read(&mut buf).await.unwrap(); if r == 0 { break; } n += r; }
        eprintln!("sink got {n}");
    });
    let scfg = server_config(&scert, &bundle).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();

        let tls = tls_accept(tcp, scfg).await.unwrap();
        serve(tls, &H2Settings::default(), |req| {
            let target = req.parsed.as_ref().unwrap().target;
            let st = req.accept().unwrap();
            tokio::spawn(async move {
                let mut t = TcpStream::connect(target).await.unwrap();
                let r = copy_bidirectional(&mut t, st).await;
                eprintln!("server copy {r:?}");
            });
        }).await.unwrap();
    });
    let ccfg = client_config(&ccert, &bundle, &[scert.identity().clone()]).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();

    let tls = tls_connect(tcp, ccfg).await.unwrap();
    let conn = ClientConn::handshake(tls, &H2Settings::default()).await.unwrap();
    let st = conn.connect(&ConnectRequest::new(sink_addr)).await.unwrap();
    let app_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app_l.local_addr().unwrap();
    let proxy = tokio::spawn(async move {
        let (mut d, _) = app_l.accept().await.unwrap();
        copy_bidirectional(&mut d, st).await
    });
    let mut app = TcpStream::connect(app_addr).await.unwrap();
    let buf = vec![7u8; 256 << 10];
    let start = Instant::now();
    let mut sent = 0;
    let down = std::env::args().nth(2).as_deref() == Some("down");
    while !down && sent < TOTAL { app.write_all(&buf).await.unwrap(); sent += buf.len(); }
    app.shutdown().await.unwrap();
    let mut rbuf = vec![0u8; 256 << 10];
    loop { if app.read(&mut rbuf).await.unwrap() == 0 { break; } }
    let el = start.elapsed();
    let r = proxy.await.unwrap();
    println!("{r:?} {:.2} Gbit/s in {el:?}", (TOTAL as f64 * 8.0) / el.as_secs_f64() / 1e9);
    let _ = Arc::new(());
}
