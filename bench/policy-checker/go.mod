module clusteraudit.dev/policybench

go 1.25

require k8s.io/apiserver v0.36.3
