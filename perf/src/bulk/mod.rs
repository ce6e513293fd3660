//! The bulk-transfer floors (issue 12 §2): single-stream throughput and
//! proxy CPU per GB of Trellis's node proxies against what any design can
//! reach on the same capture and topology, measured in one run.
//!
//! * [`relay`]: `trellis-relay`, the floor relays (TCP, splice, TLS without HTTP/2).
//! * [`columns`]: what each column runs on the path, started and torn down per run.
//! * [`measure`]: one iperf3 run through a column, with the CPU and counters of its processes.
//! * [`profile`]: `--profile`, perf record of the meshed columns, side by side.
//! * [`report`]: mean and spread over the repeats, Trellis's ratio to each floor.
//! * [`bench`](mod@bench): the interleaved rounds (`trellis-bulk-bench`).

pub mod bench;
pub mod columns;
pub mod measure;
pub mod profile;
pub mod relay;
pub mod report;
