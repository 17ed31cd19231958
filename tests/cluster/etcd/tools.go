//go:build tools

// Package tools pins the etcd release that Kubernetes v1.34.4 supports (its go.mod's).
package tools

import _ "go.etcd.io/etcd/server/v3"
