//! The agent's side of ZDS as bytes: requests to encode, and what the node
//! proxy may send back (its hello, then one Ack per request). Pure, so
//! every malformed answer is a table case.

use prost::Message;
use trellis_api::pb::istio::workload::zds::{
    workload_request::Payload as Req, workload_response::Payload as Resp, AddWorkload, DelWorkload,
    KeepWorkload, SnapshotSent, Version, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
};

use crate::wire::PodRef;

/// The longest answer the agent reads; an Ack is a few bytes plus its error text.
pub const MAX_PACKET: usize = 16 * 1024;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the node proxy's first message is not a ZdsHello: {0}")]
    BadHello(String),
    #[error("the node proxy speaks ZDS version {0}, this agent speaks V1 only")]
    Version(i32),
    #[error("the node proxy sent a packet that is not a WorkloadResponse: {0}")]
    Decode(String),
    #[error("the node proxy sent a WorkloadResponse without a payload")]
    Empty,
    #[error("the node proxy sent a packet longer than {MAX_PACKET} bytes")]
    Truncated,
    #[error("the node proxy sent file descriptors, which ZDS never does in this direction")]
    UnexpectedFds,
}

/// What the node proxy answered to one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Ack,
    /// The Ack's error text: the request failed there.
    Nack(String),
}

/// What a received packet looked like, apart from its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketMeta {
    pub fds: usize,
    pub truncated: bool,
}

fn check(meta: PacketMeta) -> Result<(), ProtocolError> {
    if meta.truncated {
        return Err(ProtocolError::Truncated);
    }
    if meta.fds > 0 {
        return Err(ProtocolError::UnexpectedFds);
    }
    Ok(())
}

/// Checks the node proxy's first packet.
pub fn parse_hello(data: &[u8], meta: PacketMeta) -> Result<(), ProtocolError> {
    check(meta)?;
    let hello = ZdsHello::decode(data).map_err(|e| ProtocolError::BadHello(e.to_string()))?;
    match Version::try_from(hello.version) {
        Ok(Version::V1) => Ok(()),
        _ => Err(ProtocolError::Version(hello.version)),
    }
}

/// Reads one answer.
pub fn parse_answer(data: &[u8], meta: PacketMeta) -> Result<Answer, ProtocolError> {
    check(meta)?;
    let resp = WorkloadResponse::decode(data).map_err(|e| ProtocolError::Decode(e.to_string()))?;
    match resp.payload {
        Some(Resp::Ack(a)) if a.error.is_empty() => Ok(Answer::Ack),
        Some(Resp::Ack(a)) => Ok(Answer::Nack(a.error)),
        None => Err(ProtocolError::Empty),
    }
}

fn encode(payload: Req) -> Vec<u8> {
    WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec()
}

/// AddWorkload; the caller sends the pod's netns fd with it.
pub fn add(pod: &PodRef) -> Vec<u8> {
    encode(Req::Add(AddWorkload {
        uid: pod.uid.clone(),
        workload_info: Some(WorkloadInfo {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            // From the API server in Kubernetes mode (empty otherwise: the
            // node proxy finds the identity in its config by pod name).
            service_account: pod.service_account.clone(),
        }),
    }))
}

pub fn keep(uid: &str) -> Vec<u8> {
    encode(Req::Keep(KeepWorkload {
        uid: uid.to_string(),
    }))
}

pub fn del(uid: &str) -> Vec<u8> {
    encode(Req::Del(DelWorkload {
        uid: uid.to_string(),
    }))
}

pub fn snapshot_sent() -> Vec<u8> {
    encode(Req::SnapshotSent(SnapshotSent {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(error: &str) -> Vec<u8> {
        WorkloadResponse {
            payload: Some(Resp::Ack(trellis_api::pb::istio::workload::zds::Ack {
                error: error.into(),
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn answers() {
        let clean = PacketMeta::default();
        type Case<'a> = (&'a str, Vec<u8>, PacketMeta, Result<Answer, ProtocolError>);
        let cases: Vec<Case> = vec![
            ("ack", ack(""), clean, Ok(Answer::Ack)),
            (
                "nack",
                ack("no such netns"),
                clean,
                Ok(Answer::Nack("no such netns".into())),
            ),
            ("no payload", vec![], clean, Err(ProtocolError::Empty)),
            (
                "garbage",
                vec![0xff, 0xff, 0xff],
                clean,
                Err(ProtocolError::Decode(String::new())),
            ),
            (
                "truncated",
                ack(""),
                PacketMeta {
                    fds: 0,
                    truncated: true,
                },
                Err(ProtocolError::Truncated),
            ),
            (
                "an fd from the proxy",
                ack(""),
                PacketMeta {
                    fds: 1,
                    truncated: false,
                },
                Err(ProtocolError::UnexpectedFds),
            ),
        ];
        for (name, data, meta, want) in cases {
            let got = parse_answer(&data, meta);
            match (&got, &want) {
                // Decode errors carry prost's text; the variant is what matters.
                (Err(ProtocolError::Decode(_)), Err(ProtocolError::Decode(_))) => {}
                _ => assert_eq!(got, want, "{name}"),
            }
        }
    }

    #[test]
    fn hellos() {
        let v1 = ZdsHello {
            version: Version::V1 as i32,
        }
        .encode_to_vec();
        let unset = ZdsHello { version: 0 }.encode_to_vec();
        let future = ZdsHello { version: 7 }.encode_to_vec();
        assert_eq!(parse_hello(&v1, PacketMeta::default()), Ok(()));
        assert_eq!(
            parse_hello(&unset, PacketMeta::default()),
            Err(ProtocolError::Version(0))
        );
        assert_eq!(
            parse_hello(&future, PacketMeta::default()),
            Err(ProtocolError::Version(7))
        );
        assert!(matches!(
            parse_hello(&[0xff, 0x01], PacketMeta::default()),
            Err(ProtocolError::BadHello(_))
        ));
    }

    #[test]
    fn requests_use_istios_field_numbers() {
        let pod = PodRef {
            namespace: "demo".into(),
            name: "web-0".into(),
            uid: "u1".into(),
            service_account: "web".into(),
        };
        // oneof field 1 (add), length-delimited: tag 0x0a.
        assert_eq!(add(&pod)[0], 0x0a);
        // del is field 2 of the oneof, and its uid is field 2 of DelWorkload.
        assert_eq!(del("u1"), vec![0x12, 0x04, 0x12, 0x02, b'u', b'1']);
        // keep is field 5, its uid field 1.
        assert_eq!(keep("u1"), vec![0x2a, 0x04, 0x0a, 0x02, b'u', b'1']);
        // snapshot_sent is field 3, empty.
        assert_eq!(snapshot_sent(), vec![0x1a, 0x00]);
        let back = WorkloadRequest::decode(add(&pod).as_slice()).unwrap();
        let Some(Req::Add(a)) = back.payload else {
            panic!("not an add")
        };
        assert_eq!(a.uid, "u1");
        let info = a.workload_info.unwrap();
        assert_eq!(info.namespace, "demo");
        assert_eq!(info.service_account, "web");
    }

    #[test]
    fn random_answers_never_panic() {
        let mut rng = fastrand::Rng::with_seed(14);
        for _ in 0..3000 {
            let data: Vec<u8> = (0..rng.usize(..40)).map(|_| rng.u8(..)).collect();
            let meta = PacketMeta {
                fds: rng.usize(..2),
                truncated: rng.bool(),
            };
            // An error or an answer, never a panic.
            let _ = parse_answer(&data, meta);
            let _ = parse_hello(&data, meta);
        }
    }
}
