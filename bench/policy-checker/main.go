// Reference benchmark: the kube-apiserver's own audit policy checker
// (k8s.io/apiserver/pkg/audit/policy) on the same policy and requests as the Rust benchmark.
//
//	policy-checker -policy policy.yaml -requests requests.jsonl -seconds 5
//
// Prints decisions per second and the count per level, so both implementations can be checked to
// agree on every decision.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"k8s.io/apiserver/pkg/apis/audit"
	"k8s.io/apiserver/pkg/audit/policy"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
)

type request struct {
	User            string   `json:"user"`
	Groups          []string `json:"groups"`
	Verb            string   `json:"verb"`
	ResourceRequest bool     `json:"resourceRequest"`
	APIGroup        string   `json:"apiGroup"`
	Resource        string   `json:"resource"`
	Subresource     string   `json:"subresource"`
	Namespace       string   `json:"namespace"`
	Name            string   `json:"name"`
	Path            string   `json:"path"`
}

func main() {
	policyPath := flag.String("policy", "", "audit policy file")
	requestsPath := flag.String("requests", "", "requests, one JSON object per line")
	seconds := flag.Float64("seconds", 5, "how long to measure")
	flag.Parse()

	p, err := policy.LoadPolicyFromFile(*policyPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	evaluator := policy.NewPolicyRuleEvaluator(p)

	file, err := os.Open(*requestsPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var attrs []authorizer.Attributes
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		var r request
		if err := json.Unmarshal(scanner.Bytes(), &r); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		attrs = append(attrs, authorizer.AttributesRecord{
			User:            &user.DefaultInfo{Name: r.User, Groups: r.Groups},
			Verb:            r.Verb,
			ResourceRequest: r.ResourceRequest,
			APIGroup:        r.APIGroup,
			Resource:        r.Resource,
			Subresource:     r.Subresource,
			Namespace:       r.Namespace,
			Name:            r.Name,
			Path:            r.Path,
		})
	}

	levels := map[audit.Level]int{}
	for _, a := range attrs {
		levels[evaluator.EvaluatePolicyRule(a).Level]++
	}

	deadline := time.Now().Add(time.Duration(*seconds * float64(time.Second)))
	decisions := 0
	start := time.Now()
	for time.Now().Before(deadline) {
		for _, a := range attrs {
			evaluator.EvaluatePolicyRule(a)
		}
		decisions += len(attrs)
	}
	elapsed := time.Since(start).Seconds()
	fmt.Printf("decisions_per_second %.0f\n", float64(decisions)/elapsed)
	fmt.Printf("levels None=%d Metadata=%d Request=%d RequestResponse=%d\n",
		levels[audit.LevelNone], levels[audit.LevelMetadata], levels[audit.LevelRequest], levels[audit.LevelRequestResponse])
}
