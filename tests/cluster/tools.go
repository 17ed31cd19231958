//go:build tools

// Package tools pins the Kubernetes release whose control plane (and kubectl) the tests run
// against. build.sh builds these commands; nothing here is part of the product.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
