//! `trellis-relay --probe`: what io_uring this kernel offers the relay,
//! asked rather than assumed: the opcodes the relay's modes use (and
//! RECV_ZC), the ring flags it sets up with, and whether a zero-copy
//! receive queue (zcrx) can be registered on each interface of the
//! current netns. zcrx needs a NIC with header split and a hardware queue
//! to give to the ring; the probe reports the kernel's exact answer.

use std::io;
use std::os::fd::AsRawFd;

use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

/// `IORING_REGISTER_ZCRX_IFQ` (include/uapi/linux/io_uring.h).
const IORING_REGISTER_ZCRX_IFQ: libc::c_uint = 32;
/// `IORING_MEM_REGION_TYPE_USER`: the refill ring is in our memory.
const IORING_MEM_REGION_TYPE_USER: u32 = 1;
/// Refill queue entries asked for.
const RQ_ENTRIES: u32 = 64;
/// Size of `struct io_uring_zcrx_rqe`.
const RQE_SIZE: usize = 16;
/// The receive area offered: 2 MiB of anonymous memory.
const AREA_LEN: usize = 2 << 20;
/// An interface index no netns has: the control asking whether the
/// kernel has zcrx at all (ENODEV) or not (EOPNOTSUPP, EINVAL).
const NO_SUCH_IFINDEX: u32 = 0x7fff_fff0;

/// `struct io_uring_zcrx_offsets`.
#[repr(C)]
#[derive(Default)]
struct ZcrxOffsets {
    head: u32,
    tail: u32,
    rqes: u32,
    resv2: u32,
    resv: [u64; 2],
}

/// `struct io_uring_zcrx_ifq_reg`.
#[repr(C)]
#[derive(Default)]
struct ZcrxIfqReg {
    if_idx: u32,
    if_rxq: u32,
    rq_entries: u32,
    flags: u32,
    area_ptr: u64,
    region_ptr: u64,
    offsets: ZcrxOffsets,
    zcrx_id: u32,
    resv2: u32,
    resv: [u64; 3],
}

/// `struct io_uring_zcrx_area_reg`.
#[repr(C)]
#[derive(Default)]
struct ZcrxAreaReg {
    addr: u64,
    len: u64,
    rq_area_token: u64,
    flags: u32,
    dmabuf_fd: u32,
    resv2: [u64; 2],
}

/// `struct io_uring_region_desc`.
#[repr(C)]
#[derive(Default)]
struct RegionDesc {
    user_addr: u64,
    size: u64,
    flags: u32,
    id: u32,
    mmap_offset: u64,
    resv: [u64; 4],
}

/// The opcodes the probe asks about: the relay's, and zero-copy receive.
pub fn opcodes() -> [(&'static str, u8); 7] {
    [
        ("RECV", opcode::Recv::CODE),
        ("SEND", opcode::Send::CODE),
        ("READ_FIXED", opcode::ReadFixed::CODE),
        ("WRITE_FIXED", opcode::WriteFixed::CODE),
        ("SEND_ZC", opcode::SendZc::CODE),
        ("RECV_ZC", opcode::RecvZc::CODE),
        ("PROVIDE_BUFFERS", opcode::ProvideBuffers::CODE),
    ]
}

/// What an errno from registering a zcrx queue means here.
pub fn zcrx_meaning(errno: i32) -> &'static str {
    match errno {
        0 => "registered: this interface can give a hardware queue to the ring",
        libc::EPERM => "needs CAP_NET_ADMIN",
        libc::ENODEV => "no such interface (the control: the kernel has zcrx and looked the interface up)",
        libc::EOPNOTSUPP => {
            "the device cannot give a queue to io_uring (no parent device / queue management ops: no header split, no hardware queue), or the kernel lacks CONFIG_IO_URING_ZCRX"
        }
        libc::EINVAL => "refused the request (ring flags, queue index or layout)",
        libc::ERANGE => "the queue index is out of the device's range",
        libc::EEXIST | libc::EBUSY => "the queue is already taken (XDP or another memory provider)",
        libc::ENOMEM => "out of memory for the area",
        _ => "unexpected",
    }
}

/// One interface's answer, as a report line.
pub fn zcrx_line(ifname: &str, result: &io::Result<()>) -> String {
    match result {
        Ok(()) => format!("zcrx on {ifname}: {}", zcrx_meaning(0)),
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(0);
            format!(
                "zcrx on {ifname}: {} ({e}): {}",
                errno_name(errno),
                zcrx_meaning(errno)
            )
        }
    }
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENODEV => "ENODEV",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EINVAL => "EINVAL",
        libc::ERANGE => "ERANGE",
        libc::EEXIST => "EEXIST",
        libc::EBUSY => "EBUSY",
        libc::ENOMEM => "ENOMEM",
        _ => "errno",
    }
}

/// Which interfaces the zcrx registration is tried on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interfaces {
    /// Every interface of the current netns: for a pod's netns (the bench
    /// runs it there), where nothing else uses the queues. Registering
    /// succeeds only on a NIC with header split, and then takes its queue 0
    /// for the probe's few milliseconds, so not the default on a host.
    All,
    Named(Vec<String>),
}

impl Interfaces {
    /// `--probe`'s arguments: none is loopback only; `all`; or names.
    pub fn parse(args: &[String]) -> Interfaces {
        match args {
            [] => Interfaces::Named(vec!["lo".into()]),
            [all] if all == "all" => Interfaces::All,
            names => Interfaces::Named(names.to_vec()),
        }
    }
}

/// The whole report, one finding per line.
pub fn report(which: &Interfaces) -> Vec<String> {
    let mut lines = vec![format!("kernel: {}", kernel_release())];
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unreadable ({e})"));
    lines.push(format!("kernel.io_uring_disabled: {disabled}"));
    match probe_opcodes() {
        Ok(found) => {
            let list: Vec<String> = found
                .iter()
                .map(|(name, yes)| format!("{name} {}", if *yes { "yes" } else { "NO" }))
                .collect();
            lines.push(format!("opcodes: {}", list.join(", ")));
        }
        Err(e) => lines.push(format!("opcodes: cannot probe: {e}")),
    }
    let flags = IoUring::<squeue::Entry, cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)
        .map(|_| "yes".to_string())
        .unwrap_or_else(|e| format!("NO ({e})"));
    lines.push(format!("ring with SINGLE_ISSUER|DEFER_TASKRUN: {flags}"));
    lines.push(zcrx_line(
        &format!("ifindex {NO_SUCH_IFINDEX} (none)"),
        &register_zcrx(NO_SUCH_IFINDEX),
    ));
    let listed = interfaces().map(|ifs| match which {
        Interfaces::All => ifs,
        Interfaces::Named(names) => names
            .iter()
            .map(|n| {
                let index = ifs
                    .iter()
                    .find(|(_, name)| name == n)
                    .map_or(0, |(i, _)| *i);
                (index, n.clone())
            })
            .collect(),
    });
    match listed {
        Ok(ifs) => {
            for (index, name) in ifs {
                let result = match index {
                    0 => Err(io::Error::from_raw_os_error(libc::ENODEV)),
                    i => register_zcrx(i),
                };
                lines.push(zcrx_line(&name, &result));
            }
        }
        Err(e) => lines.push(format!("zcrx: cannot list interfaces: {e}")),
    }
    lines
}

fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct; release is NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return format!("unknown ({})", io::Error::last_os_error());
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

fn probe_opcodes() -> io::Result<Vec<(&'static str, bool)>> {
    let ring = IoUring::new(8)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    Ok(opcodes()
        .into_iter()
        .map(|(name, code)| (name, probe.is_supported(code)))
        .collect())
}

/// (index, name) of every interface in this netns.
fn interfaces() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns an array ended by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut p = list;
        while (*p).if_index != 0 {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            out.push(((*p).if_index, name));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
        Ok(out)
    }
}

/// Anonymous memory, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh private anonymous mapping.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what new mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Tries to register a zcrx queue (rx queue 0) of interface `if_idx` with a
/// ring set up as zcrx requires (DEFER_TASKRUN, 32-byte CQEs).
fn register_zcrx(if_idx: u32) -> io::Result<()> {
    let ring = IoUring::<squeue::Entry, cqueue::Entry32>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)?;
    let area_mem = Mapping::new(AREA_LEN)?;
    let ring_len = (RQ_ENTRIES as usize * RQE_SIZE + 4096).next_multiple_of(4096);
    let rq_mem = Mapping::new(ring_len)?;
    let area = ZcrxAreaReg {
        addr: area_mem.ptr as u64,
        len: AREA_LEN as u64,
        ..Default::default()
    };
    let region = RegionDesc {
        user_addr: rq_mem.ptr as u64,
        size: ring_len as u64,
        flags: IORING_MEM_REGION_TYPE_USER,
        ..Default::default()
    };
    let mut reg = ZcrxIfqReg {
        if_idx,
        if_rxq: 0,
        rq_entries: RQ_ENTRIES,
        area_ptr: &area as *const ZcrxAreaReg as u64,
        region_ptr: &region as *const RegionDesc as u64,
        ..Default::default()
    };
    // SAFETY: io_uring_register(2) with a registration struct laid out as
    // the UAPI's, pointing at memory that outlives the call (and the ring,
    // which is dropped before the mappings).
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            IORING_REGISTER_ZCRX_IFQ,
            &mut reg as *mut ZcrxIfqReg,
            1,
        )
    };
    drop(ring);
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uapi_struct_sizes() {
        // include/uapi/linux/io_uring.h: a wrong layout would make the
        // kernel's answer meaningless.
        assert_eq!(std::mem::size_of::<ZcrxIfqReg>(), 96);
        assert_eq!(std::mem::size_of::<ZcrxAreaReg>(), 48);
        assert_eq!(std::mem::size_of::<RegionDesc>(), 64);
        assert_eq!(std::mem::size_of::<ZcrxOffsets>(), 32);
    }

    #[test]
    fn zcrx_lines_name_the_errno_and_what_it_means() {
        // (result, fragments of the line)
        let cases: [(io::Result<()>, &[&str]); 4] = [
            (Ok(()), &["zcrx on eth0: registered"]),
            (
                Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
                &["EOPNOTSUPP", "no header split"],
            ),
            (
                Err(io::Error::from_raw_os_error(libc::ENODEV)),
                &["ENODEV", "the kernel has zcrx"],
            ),
            (
                Err(io::Error::from_raw_os_error(libc::E2BIG)),
                &["errno", "unexpected"],
            ),
        ];
        for (result, fragments) in cases {
            let line = zcrx_line("eth0", &result);
            for f in fragments {
                assert!(line.contains(f), "{line:?} lacks {f:?}");
            }
        }
    }

    #[test]
    fn the_probe_answers_for_every_opcode() {
        // Rings may be refused (io_uring_disabled, seccomp): the report
        // then says so on its line rather than failing.
        let lines = report(&Interfaces::Named(vec!["lo".into(), "no-such-if0".into()]));
        assert!(lines[0].starts_with("kernel: "), "{lines:?}");
        let ops = lines.iter().find(|l| l.starts_with("opcodes: ")).unwrap();
        for (name, _) in opcodes() {
            assert!(ops.contains(name) || ops.contains("cannot probe"), "{ops}");
        }
        assert!(lines.iter().any(|l| l.contains("zcrx on lo")), "{lines:?}");
        let missing = lines.iter().find(|l| l.contains("no-such-if0")).unwrap();
        assert!(missing.contains("ENODEV"), "{missing}");
    }

    #[test]
    fn probe_arguments() {
        let a = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let named = |v: &[&str]| Interfaces::Named(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(Interfaces::parse(&a("")), named(&["lo"]));
        assert_eq!(Interfaces::parse(&a("all")), Interfaces::All);
        assert_eq!(Interfaces::parse(&a("eth0 lo")), named(&["eth0", "lo"]));
    }
}
