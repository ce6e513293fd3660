//go:build tools

// Package tools pins etcd for Trellis's tests. install.sh builds the etcd
// server with `go build go.etcd.io/etcd/server/v3` from this module. It is a
// module of its own so etcd gets the dependency versions it was released
// with, not the ones Kubernetes's module graph would pick.
package tools

import _ "go.etcd.io/etcd/server/v3"
