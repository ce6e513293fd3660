//! The attack table: Markdown and JSON.

use serde_json::{json, Value};

use super::bench::{Row, RSS_BOUND_MIB, VICTIM_P99_FACTOR, VICTIM_P99_SLACK_MS};

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(us: f64) -> String {
    format!("{:.1}", us / 1000.0)
}

/// The Markdown report: the table, then each row's details.
pub fn markdown(rows: &[Row], notes: &[String]) -> String {
    let mut md = String::from("# HTTP/2 attacks on the HBONE ports (issue 16, section 3)\n\n");
    md += "Attacker: a mesh workload with a valid certificate (`sa/mallory`), raw HTTP/2 frames over mTLS, \
reconnecting whenever the proxy ends a connection. Victim: another tenant's HTTP/1.1 traffic through the same \
proxy, 200 req/s on 4 kept-alive connections plus a new connection every 25 ms. \
Latencies are p50 / p99 in ms, before the attack → during it.\n\n";
    md += "| proxy | attack | proxy's answer (attacker's view) | attacker: conns, frames, MB, CPU s | proxy: CPU s, RSS peak growth MiB, RSS after | victim kept-alive p50/p99 | victim new-conn p50/p99 | victim errors | pass |\n";
    md += "|---|---|---|---|---|---|---|---|---|\n";
    for r in rows {
        let o = &r.outcome;
        md += &format!(
            "| {} | {} | {} | {}, {}, {:.1}, {:.2} | {:.2}, {:+.1}, {:+.1} | {}/{} → {}/{} | {}/{} → {}/{} | {} → {} | {} |\n",
            r.proxy.label(),
            r.attack.key(),
            o.proxy_answer(),
            o.connections,
            o.frames_sent,
            o.bytes_sent as f64 / 1e6,
            o.cpu_s,
            r.proxy_cpu_s,
            r.peak_growth_mib(),
            mib(r.rss_after_kib) - mib(r.rss_before_kib),
            ms(r.before.keepalive.p50_us),
            ms(r.before.keepalive.p99_us),
            ms(r.during.keepalive.p50_us),
            ms(r.during.keepalive.p99_us),
            ms(r.before.fresh.p50_us),
            ms(r.before.fresh.p99_us),
            ms(r.during.fresh.p50_us),
            ms(r.during.fresh.p99_us),
            r.before.errors(),
            r.during.errors(),
            if r.pass() { "PASS" } else { "FAIL" },
        );
    }
    md += &format!(
        "\nPass: every attacker connection ended by the proxy before the attacker's bound (GOAWAY, \
RST or close; for the frame attacks, the last connection may still be open when the bound cuts it), peak RSS growth ≤ {RSS_BOUND_MIB} MiB, no victim error during the attack, and each victim p99 during it at most {VICTIM_P99_FACTOR}× its p99 alone, or {VICTIM_P99_SLACK_MS} ms above it, whichever is more.\n\n"
    );
    md += "Attacker bytes and frames are what it wrote into its TLS stream; after the proxy's \
GOAWAY the rest of a batch in flight is never read by the proxy (the connection is reset).\n\n## Details\n\n";
    for r in rows {
        let o = &r.outcome;
        md += &format!("- **{} / {}**: ", r.proxy.label(), r.attack.key());
        if let Some(m) = o.median_frames_per_conn() {
            md += &format!("median {m} frames sent per connection before the proxy ended it; ");
        }
        if !o.closed_after_s.is_empty() {
            let mut v = o.closed_after_s.clone();
            v.sort_by(f64::total_cmp);
            md += &format!(
                "slow connections closed by the proxy after {:.1} s (min) / {:.1} s (median) / {:.1} s (max); ",
                v[0],
                v[v.len() / 2],
                v[v.len() - 1]
            );
        }
        md += &format!(
            "RSS {:.1} → peak {:.1} → {:.1} MiB after; victim requests during: {} kept-alive, {} new connections ({} slots skipped)",
            mib(r.rss_before_kib),
            mib(r.rss_peak_kib),
            mib(r.rss_after_kib),
            r.during.keepalive_sent,
            r.during.fresh_sent,
            r.during.fresh_skipped,
        );
        if !r.during.error_kinds.is_empty() {
            md += &format!("; victim errors: {:?}", r.during.error_kinds);
        }
        md += "\n";
    }
    md += "\n## Notes\n\n";
    for n in notes {
        md += &format!("- {n}\n");
    }
    md
}

pub fn json_doc(rows: &[Row], notes: &[String], config: Value) -> Value {
    json!({
        "bench": "trellis-attack-bench",
        "config": config,
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "notes": notes,
    })
}
