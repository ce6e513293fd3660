#!/usr/bin/env python3
"""An HBONE peer built on a different stack from Trellis, for interop tests.

Trellis speaks HBONE with rustls and the Rust `h2` crate. This peer uses
Python's `ssl` module (OpenSSL) and the pure-Python `h2` package (4.x), so a
test that passes through it shows the wire format works with an independent
implementation of TLS 1.3, ALPN and HTTP/2 CONNECT (RFC 9113 section 8.5).

Two modes, each printing JSON lines on stdout and exiting 0 (also on
failures, which are reported as {"error": ..., "phase": ...}):

  client  Connects to an HBONE listener, checks the server's SPIFFE identity,
          sends a CONNECT for --target, tunnels --payload through it and
          reports what came back.
  server  Listens on --listen, prints {"listening": true}, accepts one HBONE
          connection, answers its CONNECT with 200, echoes the stream's data
          until the client ends it, and reports what it saw.

Only the standard library and `h2` are used
(`python3 -m pip install 'h2>=4.1,<5'`).
"""

import argparse
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

ALPN_H2 = "h2"
READ_SIZE = 65536


class PeerError(Exception):
    """A protocol-level failure worth reporting with the phase it happened in."""


class Deadline:
    """An overall deadline; every socket operation also has its own timeout."""

    def __init__(self, total, per_op):
        self.end = time.monotonic() + total
        self.per_op = per_op

    def timeout(self):
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("overall deadline passed")
        return min(left, self.per_op)


def emit(obj):
    print(json.dumps(obj, sort_keys=True), flush=True)


def uri_sans(cert):
    """The URI entries of a certificate's subjectAltName, as getpeercert() gives it."""
    if not cert:
        return []
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]


def tls_context(server_side, args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    # SPIFFE certificates name no host: the identity check is the URI SAN
    # comparison done after the handshake, not OpenSSL's hostname check.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    # RFC 5280 conformance checks, on by default in Python 3.13's default
    # context: an empty subject needs a critical SAN, the CA needs key usage.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cafile=args.ca)
    ctx.load_cert_chain(certfile=args.cert, keyfile=args.key)
    ctx.set_alpn_protocols([ALPN_H2])
    return ctx


def tls_facts(tls):
    cert = tls.getpeercert()
    uris = uri_sans(cert)
    cipher = tls.cipher()
    return {
        "tls_version": tls.version(),
        "alpn": tls.selected_alpn_protocol(),
        "cipher": cipher[0] if cipher else None,
        "peer_uris": uris,
    }


class H2Peer:
    """One HTTP/2 connection over a TLS socket, with a single tunnel stream.

    `pump` reads once from the socket and folds the events into plain state;
    `send_pending` writes queued tunnel bytes as far as flow control allows.
    """

    def __init__(self, tls, client_side, deadline):
        self.tls = tls
        self.deadline = deadline
        config = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.stream_id = None
        self.request_headers = None
        self.response_headers = None
        self.status = None
        self.received = bytearray()
        self.outbuf = bytearray()
        self.end_after_outbuf = False
        self.local_ended = False
        self.remote_ended = False
        self.reset_code = None
        self.goaway = None
        self.eof = False

    def start(self):
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.tls.settimeout(self.deadline.timeout())
            self.tls.sendall(data)

    def pump(self):
        """Reads one chunk and handles its events; False at end of connection."""
        if self.eof:
            return False
        self.tls.settimeout(self.deadline.timeout())
        data = self.tls.recv(READ_SIZE)
        if not data:
            self.eof = True
            return False
        for event in self.conn.receive_data(data):
            self.on_event(event)
        self.send_pending()
        self.flush()
        return True

    def on_event(self, event):
        if isinstance(event, h2.events.RequestReceived):
            if self.stream_id is None:
                self.stream_id = event.stream_id
                self.request_headers = list(event.headers)
            else:
                # One tunnel per connection is all this peer serves.
                self.conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif isinstance(event, h2.events.ResponseReceived):
            if event.stream_id == self.stream_id:
                self.response_headers = list(event.headers)
                self.status = int(dict(event.headers).get(":status", "0"))
        elif isinstance(event, h2.events.DataReceived):
            if event.stream_id == self.stream_id:
                self.received += event.data
            # Give the window back at once: the test payloads are larger than
            # the default 64 KiB window, so a peer that forgot would stall.
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            if event.stream_id == self.stream_id:
                self.remote_ended = True
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id == self.stream_id:
                self.reset_code = int(event.error_code)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = {
                "error_code": int(event.error_code),
                "last_stream_id": event.last_stream_id,
            }

    def stream_open_for_sending(self):
        return self.stream_id is not None and not self.local_ended and self.reset_code is None

    def send_pending(self):
        if not self.stream_open_for_sending():
            return
        while self.outbuf:
            window = self.conn.local_flow_control_window(self.stream_id)
            size = min(window, self.conn.max_outbound_frame_size, len(self.outbuf))
            if size <= 0:
                return  # wait for WINDOW_UPDATE
            self.conn.send_data(self.stream_id, bytes(self.outbuf[:size]))
            del self.outbuf[:size]
        if self.end_after_outbuf:
            self.conn.end_stream(self.stream_id)
            self.local_ended = True

    def pump_until(self, done, what):
        while not done():
            if self.reset_code is not None:
                raise PeerError(f"stream reset by peer with code {self.reset_code} while {what}")
            if self.remote_ended:
                raise PeerError(f"peer ended the stream while {what}")
            if not self.pump():
                raise PeerError(f"connection closed by peer while {what}")

    def read_after_failure(self):
        """After a failed write, reads once more: a TLS alert the peer sent
        before closing (say, rejecting our certificate) is still queued and
        says more than the write's broken pipe."""
        try:
            self.tls.settimeout(1.0)
            data = self.tls.recv(READ_SIZE)
            return "eof" if not data else f"{len(data)} bytes"
        except (OSError, ssl.SSLError) as e:
            return f"{type(e).__name__}: {e}"

    def close(self, linger):
        """GOAWAY, then read until the peer closes or `linger` seconds pass.

        Closing with unread bytes in the receive buffer makes the kernel send
        RST, which can destroy frames the peer has not read yet.
        """
        try:
            self.conn.close_connection()
            self.flush()
            end = time.monotonic() + linger
            while not self.eof and time.monotonic() < end:
                self.tls.settimeout(max(0.01, end - time.monotonic()))
                try:
                    if not self.tls.recv(READ_SIZE):
                        break
                except (TimeoutError, socket.timeout):
                    break
        except (OSError, ssl.SSLError, h2.exceptions.H2Error):
            pass
        finally:
            self.tls.close()


def fail(report, phase, err, peer=None):
    report["error"] = f"{type(err).__name__}: {err}"
    report["phase"] = phase
    finish(report, peer)
    return 0


def finish(report, peer):
    """Prints the report, with the peer's GOAWAY if it sent one."""
    if peer is not None and peer.goaway is not None:
        report["goaway"] = peer.goaway
    emit(report)


def handshake(ctx, raw, server_side, expect_id, deadline, report):
    """TLS handshake on `raw`, then the HBONE checks of the peer: ALPN h2 and
    exactly the expected SPIFFE URI SAN. Fills `report` (the peer's URI under
    `client_uri` or `server_uri`); returns an H2Peer, or None after emitting
    the failure."""
    who = "client" if server_side else "server"
    try:
        if server_side:
            tls = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        else:
            # No server_hostname: HBONE clients send no SNI.
            tls = ctx.wrap_socket(raw, server_hostname=None, do_handshake_on_connect=False)
        tls.settimeout(deadline.timeout())
        tls.do_handshake()
    except (OSError, ssl.SSLError) as e:
        raw.close()
        fail(report, "tls_handshake", e)
        return None
    facts = tls_facts(tls)
    uris = facts["peer_uris"]
    report.update(
        {
            "tls_version": facts["tls_version"],
            "alpn": facts["alpn"],
            "cipher": facts["cipher"],
            f"{who}_uri": uris[0] if len(uris) == 1 else None,
            f"{who}_uris": uris,
        }
    )
    peer = H2Peer(tls, client_side=not server_side, deadline=deadline)
    if facts["alpn"] != ALPN_H2:
        peer.close(0)
        fail(report, "alpn", PeerError(f"{who} selected ALPN {facts['alpn']!r}, not h2"))
        return None
    if expect_id and report[f"{who}_uri"] != expect_id:
        peer.close(0)
        fail(report, "identity", PeerError(f"{who} presented URI SANs {uris}, expected {expect_id}"))
        return None
    return peer


def run_client(args):
    deadline = Deadline(args.timeout, args.op_timeout)
    report = {"mode": "client", "target": args.target}
    host, port = split_host_port(args.connect)
    try:
        source = (args.bind, 0) if args.bind else None
        raw = socket.create_connection((host, port), timeout=deadline.timeout(), source_address=source)
    except OSError as e:
        return fail(report, "connect", e)
    local = raw.getsockname()
    report["local_addr"] = f"{local[0]}:{local[1]}"
    try:
        ctx = tls_context(False, args)
    except (OSError, ssl.SSLError) as e:
        raw.close()
        return fail(report, "tls_config", e)
    peer = handshake(ctx, raw, False, args.expect_server_id, deadline, report)
    if peer is None:
        return 0
    phase = "h2_handshake"
    try:
        peer.start()
        forwarded_for = args.forwarded_for or report["local_addr"]
        peer.stream_id = peer.conn.get_next_available_stream_id()
        # RFC 9113 8.5: a CONNECT request carries only :method and :authority.
        headers = [
            (":method", "CONNECT"),
            (":authority", args.target),
            ("forwarded", f'for="{forwarded_for}"'),
        ]
        if args.baggage:
            headers.append(("baggage", args.baggage))
        peer.conn.send_headers(peer.stream_id, headers)
        peer.flush()
        phase = "response"
        peer.pump_until(lambda: peer.status is not None, "waiting for the CONNECT response")
        report["status"] = peer.status
        report["response_baggage"] = dict(peer.response_headers or []).get("baggage")
        if peer.status != 200:
            report["server_ended"] = peer.remote_ended
            peer.close(args.linger)
            finish(report, peer)
            return 0
        phase = "tunnel"
        payload = (args.payload * args.repeat).encode()
        peer.outbuf += payload
        peer.send_pending()
        peer.flush()
        peer.pump_until(lambda: len(peer.received) >= len(payload), "reading the echo")
        # Half-close only after the echo is back: the tunnel must carry data
        # both ways at once, then pass our END_STREAM on to the application.
        peer.end_after_outbuf = True
        peer.send_pending()
        peer.flush()
        phase = "close"
        peer.pump_until(lambda: peer.remote_ended, "waiting for the server to end the stream")
        report["echo"] = peer.received.decode("utf-8", errors="replace")
        report["server_ended"] = peer.remote_ended
    except (OSError, ssl.SSLError, h2.exceptions.H2Error, PeerError) as e:
        report["received_bytes"] = len(peer.received)
        if isinstance(e, OSError) and not peer.eof:
            report["then_read"] = peer.read_after_failure()
        peer.close(0)
        return fail(report, phase, e, peer)
    peer.close(args.linger)
    finish(report, peer)
    return 0


def run_server(args):
    deadline = Deadline(args.timeout, args.op_timeout)
    report = {"mode": "server"}
    host, port = split_host_port(args.listen)
    try:
        ctx = tls_context(True, args)
        listener = socket.create_server((host, port))
    except (OSError, ssl.SSLError) as e:
        return fail(report, "listen", e)
    emit({"listening": True, "addr": f"{host}:{port}"})
    phase = "accept"
    try:
        listener.settimeout(max(0.01, deadline.end - time.monotonic()))
        raw, peer_addr = listener.accept()
    except OSError as e:
        listener.close()
        return fail(report, phase, e)
    listener.close()
    report["peer_addr"] = f"{peer_addr[0]}:{peer_addr[1]}"
    peer = handshake(ctx, raw, True, args.expect_client_id, deadline, report)
    if peer is None:
        return 0
    phase = "request"
    try:
        peer.start()
        peer.pump_until(lambda: peer.request_headers is not None, "waiting for a request")
        headers = peer.request_headers
        values = dict(headers)
        report["method"] = values.get(":method")
        report["authority"] = values.get(":authority")
        report["forwarded"] = values.get("forwarded")
        report["baggage"] = values.get("baggage")
        report["traceparent"] = values.get("traceparent")
        report["header_names"] = [name for name, _ in headers]
        if report["method"] != "CONNECT":
            peer.conn.send_headers(peer.stream_id, [(":status", "405")], end_stream=True)
            peer.flush()
            peer.close(args.linger)
            return fail(report, phase, PeerError(f"method {report['method']!r} is not CONNECT"), peer)
        peer.conn.send_headers(peer.stream_id, [(":status", "200")])
        peer.flush()
        phase = "tunnel"

        def echo_all():
            # Echo happens in on_event order: move what arrived to the send queue.
            if peer.received:
                report["bytes"] = report.get("bytes", 0) + len(peer.received)
                peer.outbuf += peer.received
                peer.received.clear()
            if peer.remote_ended:
                peer.end_after_outbuf = True
            peer.send_pending()
            peer.flush()
            return peer.local_ended

        report["bytes"] = 0
        while not echo_all():
            if peer.reset_code is not None:
                raise PeerError(f"stream reset by peer with code {peer.reset_code}")
            if not peer.pump():
                raise PeerError("connection closed by peer before the stream ended")
    except (OSError, ssl.SSLError, h2.exceptions.H2Error, PeerError) as e:
        peer.close(0)
        return fail(report, phase, e, peer)
    # Report before lingering: the test reads this line while we wait for the
    # client's proxy to close its (pooled) connection.
    finish(report, peer)
    peer.close(args.linger)
    return 0


def split_host_port(text):
    host, sep, port = text.rpartition(":")
    if not sep:
        raise SystemExit(f"address {text!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["client", "server"])
    p.add_argument("--ca", required=True, help="PEM file of the trust root the peer must chain to")
    p.add_argument("--cert", required=True, help="PEM certificate chain to present (leaf first)")
    p.add_argument("--key", required=True, help="PEM private key of the leaf")
    p.add_argument("--connect", help="client: HBONE address to dial, HOST:PORT")
    p.add_argument("--bind", help="client: local IP to connect from")
    p.add_argument("--target", help="client: CONNECT :authority, IP:PORT")
    p.add_argument("--baggage", help="client: a baggage header to send on the CONNECT")
    p.add_argument("--forwarded-for", help="client: address for the forwarded header (default: our own)")
    p.add_argument("--expect-server-id", help="client: the server's SPIFFE ID (URI SAN) must equal this")
    p.add_argument("--payload", default="hello over hbone\n", help="client: text to tunnel")
    p.add_argument("--repeat", type=int, default=1, help="client: how many times to send --payload")
    p.add_argument("--listen", help="server: HOST:PORT to listen on")
    p.add_argument("--expect-client-id", help="server: the client's SPIFFE ID (URI SAN) must equal this")
    p.add_argument("--timeout", type=float, default=20.0, help="overall deadline, seconds")
    p.add_argument("--op-timeout", type=float, default=10.0, help="deadline of each socket operation")
    p.add_argument("--linger", type=float, default=1.0, help="seconds to wait for the peer to close")
    args = p.parse_args(argv)
    if args.mode == "client" and not (args.connect and args.target):
        p.error("client mode needs --connect and --target")
    if args.mode == "server" and not args.listen:
        p.error("server mode needs --listen")
    return args


def main(argv):
    args = parse_args(argv)
    try:
        return run_client(args) if args.mode == "client" else run_server(args)
    except TimeoutError as e:
        return fail({"mode": args.mode}, "deadline", e)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
