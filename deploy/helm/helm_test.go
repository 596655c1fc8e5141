// Package helm_test renders the syncd chart with Helm and checks what a
// cluster would receive: every manifest decodes strictly into the Kubernetes
// API types, pods are locked down, secrets arrive only as files, and every
// PromQL expression we ship names a metric syncd exports.
package helm_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/syncd/syncd/internal/config"
	"github.com/syncd/syncd/internal/metrics"
)

const (
	helmVersion = "v3.22.0"
	helmModule  = "helm.sh/helm/v3/cmd/helm@" + helmVersion
	chartDir    = "syncd"
	// kubeVersion is the oldest Kubernetes the chart supports (Chart.yaml);
	// a `go install`ed Helm would otherwise assume v1.20.
	kubeVersion = "1.30.0"
	release     = "billing"
	namespace   = "payments"
	secretDir   = "/etc/syncd/secrets"
)

// ExportedMetrics is every metric family syncd serves on /metrics: the list in
// CONTRACT.md plus syncd_build_info and the fleet's, with its Prometheus type. Dashboards and
// alerts may use only these (histograms through _bucket, _sum and _count).
// A test of the running binary compares this list with a real scrape.
var ExportedMetrics = map[string]string{
	"syncd_webhook_requests_total":   "counter",
	"syncd_webhook_ack_seconds":      "histogram",
	"syncd_events_total":             "counter",
	"syncd_sink_rows_total":          "counter",
	"syncd_sink_flush_seconds":       "histogram",
	"syncd_sink_queue_rows":          "gauge",
	"syncd_sink_errors_total":        "counter",
	"syncd_source_requests_total":    "counter",
	"syncd_source_request_seconds":   "histogram",
	"syncd_refresh_queue_depth":      "gauge",
	"syncd_backfill_customers_total": "counter",
	"syncd_sync_lag_seconds":         "gauge",
	"syncd_build_info":               "gauge",
	// Beyond the contract: the fleet (docs/operations.md, "Scale").
	"syncd_refresh_owed_customers":           "gauge",
	"syncd_refresh_owed_oldest_seconds":      "gauge",
	"syncd_fleet_members":                    "gauge",
	"syncd_refresh_parked_total":             "counter",
	"syncd_recovered_rows_total":             "counter",
	"syncd_backfill_deleted_customers_total": "counter",
	"syncd_backfill_balances_seconds":        "gauge",
	"syncd_refresh_skipped_events_total":     "counter",
	// The source APIs' limits (docs/limits.md).
	"syncd_source_throttled_total": "counter",
	"syncd_source_rate_limit":      "gauge",
}

// seriesNames are the names a PromQL selector may use for ExportedMetrics.
func seriesNames() map[string]string {
	names := map[string]string{}
	for name, typ := range ExportedMetrics {
		if typ == "histogram" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				names[name+suffix] = name
			}
			continue
		}
		names[name] = name
	}
	return names
}

// --- finding Helm ---

var (
	helmOnce sync.Once
	helmPath string
	helmErr  error
)

// helmBinary returns a Helm of helmVersion: $HELM if set, else one cached in
// the user cache directory, built with `go install` on first use. Outside CI a
// Helm that cannot be built skips the test; in CI it fails.
func helmBinary(t *testing.T) string {
	t.Helper()
	helmOnce.Do(func() { helmPath, helmErr = findHelm() })
	if helmErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("helm %s is required in CI: %v", helmVersion, helmErr)
		}
		t.Skipf("helm %s not available (set HELM or allow `go install %s`): %v", helmVersion, helmModule, helmErr)
	}
	return helmPath
}

func findHelm() (string, error) {
	if p := os.Getenv("HELM"); p != "" {
		return p, checkHelmVersion(p)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	bin := filepath.Join(cache, "syncd", "helm-"+helmVersion)
	exe := filepath.Join(bin, "helm")
	if runtime.GOOS == "windows" {
		exe += ".exe"
	}
	if checkHelmVersion(exe) == nil {
		return exe, nil
	}
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", err
	}
	cmd := exec.Command("go", "install", helmModule)
	// Build outside this module so its go.mod and flags play no part.
	cmd.Dir = bin
	cmd.Env = append(os.Environ(), "GOBIN="+bin, "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s: %v\n%s", helmModule, err, out)
	}
	return exe, checkHelmVersion(exe)
}

func checkHelmVersion(exe string) error {
	out, err := exec.Command(exe, "version", "--template", "{{.Version}}").Output()
	if err != nil {
		return err
	}
	// A `go install` build reports its version without the patch level.
	if got := strings.TrimSpace(string(out)); strings.TrimSuffix(got, ".0") != strings.TrimSuffix(helmVersion, ".0") {
		return fmt.Errorf("%s is helm %s, want %s", exe, got, helmVersion)
	}
	return nil
}

// runHelm runs helm with an isolated home, so no user repositories or plugins
// take part.
func runHelm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	exe := helmBinary(t)
	home := t.TempDir()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %v\n%s%s", strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	return stdout.String(), nil
}

// --- decoding ---

// serviceMonitor and prometheusRule are the parts of the prometheus-operator
// CRDs the chart uses; decoding into them strictly catches misspelt fields.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string `json:"jobLabel,omitempty"`
		NamespaceSelector struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector"`
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port              string           `json:"port"`
			Path              string           `json:"path,omitempty"`
			Scheme            string           `json:"scheme,omitempty"`
			Interval          string           `json:"interval,omitempty"`
			ScrapeTimeout     string           `json:"scrapeTimeout,omitempty"`
			Relabelings       []map[string]any `json:"relabelings,omitempty"`
			MetricRelabelings []map[string]any `json:"metricRelabelings,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Groups []struct {
			Name     string `json:"name"`
			Interval string `json:"interval,omitempty"`
			Rules    []struct {
				Alert       string            `json:"alert,omitempty"`
				Record      string            `json:"record,omitempty"`
				Expr        string            `json:"expr"`
				For         string            `json:"for,omitempty"`
				Labels      map[string]string `json:"labels,omitempty"`
				Annotations map[string]string `json:"annotations,omitempty"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

// newObject maps apiVersion/kind to the type a manifest must decode into.
var newObject = map[string]func() any{
	"apps/v1/Deployment":                      func() any { return new(appsv1.Deployment) },
	"v1/Service":                              func() any { return new(corev1.Service) },
	"v1/ServiceAccount":                       func() any { return new(corev1.ServiceAccount) },
	"v1/Secret":                               func() any { return new(corev1.Secret) },
	"networking.k8s.io/v1/Ingress":            func() any { return new(networkingv1.Ingress) },
	"networking.k8s.io/v1/NetworkPolicy":      func() any { return new(networkingv1.NetworkPolicy) },
	"policy/v1/PodDisruptionBudget":           func() any { return new(policyv1.PodDisruptionBudget) },
	"autoscaling/v2/HorizontalPodAutoscaler":  func() any { return new(autoscalingv2.HorizontalPodAutoscaler) },
	"batch/v1/Job":                            func() any { return new(batchv1.Job) },
	"batch/v1/CronJob":                        func() any { return new(batchv1.CronJob) },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return new(serviceMonitor) },
	"monitoring.coreos.com/v1/PrometheusRule": func() any { return new(prometheusRule) },
}

type manifest struct {
	kind, name, source string
	raw                []byte
	obj                any
}

type rendered []manifest

var sourceComment = regexp.MustCompile(`(?m)^# Source: (\S+)`)

// decode splits helm's output into documents and decodes each one strictly:
// an unknown or misplaced field is an error, as it would be for kubectl's
// server-side field validation.
func decode(t *testing.T, out string) rendered {
	t.Helper()
	var ms rendered
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(out, -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^#.*$`).ReplaceAllString(doc, "")) == "" {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("not YAML: %v\n%s", err, doc)
		}
		src := ""
		if m := sourceComment.FindStringSubmatch(doc); m != nil {
			src = m[1]
		}
		mk, ok := newObject[head.APIVersion+"/"+head.Kind]
		if !ok {
			t.Fatalf("%s: unexpected %s %s", src, head.APIVersion, head.Kind)
		}
		obj := mk()
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s: %s %q does not decode strictly: %v\n%s", src, head.Kind, head.Metadata.Name, err, doc)
		}
		if head.Metadata.Name == "" {
			t.Errorf("%s: %s without a name", src, head.Kind)
		}
		ms = append(ms, manifest{kind: head.Kind, name: head.Metadata.Name, source: src, raw: []byte(doc), obj: obj})
	}
	if len(ms) == 0 {
		t.Fatal("helm rendered nothing")
	}
	return ms
}

func all[T any](r rendered) []*T {
	var out []*T
	for _, m := range r {
		if o, ok := m.obj.(*T); ok {
			out = append(out, o)
		}
	}
	return out
}

func one[T any](t *testing.T, r rendered) *T {
	t.Helper()
	objs := all[T](r)
	if len(objs) != 1 {
		var zero T
		t.Fatalf("want one %T, rendered %d", zero, len(objs))
	}
	return objs[0]
}

func (r rendered) kinds() []string {
	var ks []string
	for _, m := range r {
		ks = append(ks, m.kind)
	}
	slices.Sort(ks)
	return slices.Compact(ks)
}

// --- rendering ---

func template(t *testing.T, args ...string) rendered {
	t.Helper()
	out, err := runHelm(t, append([]string{"template", release, chartDir, "--namespace", namespace, "--kube-version", kubeVersion}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, out)
}

func valueFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil || len(files) < 3 {
		t.Fatalf("want at least three value sets in testdata, got %v (%v)", files, err)
	}
	return files
}

func TestLint(t *testing.T) {
	sets := append([]string{""}, valueFiles(t)...)
	for _, f := range sets {
		name := cmp(f, "default")
		t.Run(name, func(t *testing.T) {
			args := []string{"lint", "--strict", "--kube-version", kubeVersion, chartDir}
			if f != "" {
				args = append(args, "-f", f)
			}
			if out, err := runHelm(t, args...); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		})
	}
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return strings.TrimSuffix(filepath.Base(s), ".yaml")
}

// TestRender renders every value set and checks what holds for all of them,
// then what each set is for.
func TestRender(t *testing.T) {
	specific := map[string]func(*testing.T, rendered){
		"default":         checkDefault,
		"existing-secret": checkExistingSecret,
		"monitoring":      checkMonitoring,
		"cronjob":         checkCronJob,
		"backfill-job":    checkBackfillJob,
		"sweep-both":      checkSweepBoth,
	}
	sets := append([]string{""}, valueFiles(t)...)
	for _, f := range sets {
		name := cmp(f, "default")
		t.Run(name, func(t *testing.T) {
			var args []string
			if f != "" {
				args = []string{"-f", f}
			}
			r := template(t, args...)
			checkCommon(t, r)
			check, ok := specific[name]
			if !ok {
				t.Fatalf("no checks for value set %s: add them here", f)
			}
			check(t, r)
		})
	}
}

// podSpecs returns every pod template of the release, by owner.
func podSpecs(r rendered) map[string]*corev1.PodSpec {
	pods := map[string]*corev1.PodSpec{}
	for _, d := range all[appsv1.Deployment](r) {
		pods["Deployment/"+d.Name] = &d.Spec.Template.Spec
	}
	for _, j := range all[batchv1.Job](r) {
		pods["Job/"+j.Name] = &j.Spec.Template.Spec
	}
	for _, c := range all[batchv1.CronJob](r) {
		pods["CronJob/"+c.Name] = &c.Spec.JobTemplate.Spec.Template.Spec
	}
	return pods
}

var secretLooking = regexp.MustCompile(`(?i)(KEY|SECRET|TOKEN|PASSWORD|DSN)`)

// secretValues are the fake credentials the test value sets carry; they may
// appear only inside a Secret.
var secretValues = []string{"sk_test_placeholder", "whsec_old", "whsec_new", "syncd:password@"}

func checkCommon(t *testing.T, r rendered) {
	t.Helper()
	for _, m := range r {
		if m.kind == "Secret" {
			continue
		}
		for _, v := range secretValues {
			if bytes.Contains(m.raw, []byte(v)) {
				t.Errorf("%s %s carries the secret value %q outside a Secret", m.kind, m.name, v)
			}
		}
		if len(m.name) > 63 {
			t.Errorf("%s name %q is longer than 63 characters", m.kind, m.name)
		}
	}
	for _, c := range all[batchv1.CronJob](r) {
		if len(c.Name) > 52 {
			t.Errorf("CronJob name %q is longer than 52 characters", c.Name)
		}
	}

	pods := podSpecs(r)
	if len(pods) == 0 {
		t.Fatal("no pods rendered")
	}
	for owner, pod := range pods {
		psc := pod.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
			t.Errorf("%s: pod securityContext.runAsNonRoot is not true", owner)
		}
		if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: pod seccompProfile is not RuntimeDefault", owner)
		}
		if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
			t.Errorf("%s: the Kubernetes API token is mounted; syncd never uses it", owner)
		}
		if len(pod.Containers) != 1 {
			t.Fatalf("%s: want one container, got %d", owner, len(pod.Containers))
		}
		c := pod.Containers[0]
		checkContainerSecurity(t, owner, c)
		checkTmp(t, owner, pod, c)
		checkSecretHandling(t, owner, pod, c)
		checkGoMemLimit(t, owner, c, 0.9)
	}
}

// checkGoMemLimit: a container with a memory limit runs with GOMEMLIMIT at
// ratio of it (whole MiB, rounded down), so that the Go runtime collects
// garbage harder near the limit instead of being OOM-killed; with ratio 0,
// without it.
func checkGoMemLimit(t *testing.T, owner string, c corev1.Container, ratio float64) {
	t.Helper()
	var got []string
	for _, e := range c.Env {
		if e.Name == "GOMEMLIMIT" {
			got = append(got, e.Value)
		}
	}
	limit := c.Resources.Limits.Memory()
	if ratio == 0 || limit.IsZero() {
		if len(got) != 0 {
			t.Errorf("%s: GOMEMLIMIT %v without a ratio and a memory limit", owner, got)
		}
		return
	}
	want := fmt.Sprintf("%dMiB", int64(float64(limit.Value())*ratio)>>20)
	if len(got) != 1 || got[0] != want {
		t.Errorf("%s: GOMEMLIMIT = %v, want %s (%.2f of the %s limit)", owner, got, want, ratio, limit)
		return
	}
	// What the Go runtime will read: below the limit, and by less than
	// the MiB it is rounded to beyond the ratio.
	mib, err := strconv.ParseInt(strings.TrimSuffix(got[0], "MiB"), 10, 64)
	if err != nil || mib<<20 >= limit.Value() || float64((mib+1)<<20) <= float64(limit.Value())*ratio {
		t.Errorf("%s: GOMEMLIMIT %s is not %.2f of the %s limit", owner, got[0], ratio, limit)
	}
}

// TestGoMemLimit: GOMEMLIMIT follows each container's memory limit, in
// the units Kubernetes accepts; a ratio of 0 or a GOMEMLIMIT of the
// operator's own (extraEnv) leaves it to them; a limit it cannot read fails
// the render instead of going unbounded.
func TestGoMemLimit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		ratio float64
		want  string // the serve container's, when not derived by checkGoMemLimit
	}{
		{name: "default 512Mi", ratio: 0.9},
		{name: "1Gi", args: []string{"--set", "resources.limits.memory=1Gi"}, ratio: 0.9},
		{name: "decimal units", args: []string{"--set", "resources.limits.memory=600M"}, ratio: 0.9},
		{name: "plain bytes", args: []string{"--set", "resources.limits.memory=536870912"}, ratio: 0.9},
		{name: "ratio", args: []string{"--set-json", "goMemLimitRatio=0.75"}, ratio: 0.75},
		{name: "off", args: []string{"--set", "goMemLimitRatio=0"}, ratio: 0},
		{name: "no limit", args: []string{"--set", "resources.limits=null", "--show-only", "templates/deployment.yaml"}, ratio: 0.9},
		{name: "extraEnv wins", args: []string{"--set-json", `extraEnv=[{"name":"GOMEMLIMIT","value":"300MiB"}]`}, want: "300MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := template(t, append(tc.args, "--set", "backfillCronJob.enabled=true,secrets.stripeApiKey=sk_test_placeholder")...)
			if tc.want != "" {
				_, c := serveContainer(t, r)
				var got []string
				for _, e := range c.Env {
					if e.Name == "GOMEMLIMIT" {
						got = append(got, e.Value)
					}
				}
				if len(got) != 1 || got[0] != tc.want {
					t.Errorf("GOMEMLIMIT = %v, want only %s", got, tc.want)
				}
				return
			}
			for owner, pod := range podSpecs(r) {
				checkGoMemLimit(t, owner, pod.Containers[0], tc.ratio)
			}
			if tc.name == "default 512Mi" {
				if _, c := serveContainer(t, r); len(c.Env) == 0 || c.Env[0].Value != "460MiB" {
					t.Errorf("serve env = %v, want GOMEMLIMIT 460MiB", c.Env)
				}
			}
		})
	}
	if _, err := runHelm(t, "template", release, chartDir, "--kube-version", kubeVersion, "--set", "resources.limits.memory=half"); err == nil ||
		!strings.Contains(err.Error(), "GOMEMLIMIT") {
		t.Errorf("a memory limit GOMEMLIMIT cannot be derived from renders: %v", err)
	}
}

func checkContainerSecurity(t *testing.T, owner string, c corev1.Container) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("%s: container %s has no securityContext", owner, c.Name)
	}
	isTrue := func(b *bool) bool { return b != nil && *b }
	if !isTrue(sc.RunAsNonRoot) {
		t.Errorf("%s: runAsNonRoot is not true", owner)
	}
	if sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		t.Errorf("%s: runAsUser is root or unset", owner)
	}
	if !isTrue(sc.ReadOnlyRootFilesystem) {
		t.Errorf("%s: readOnlyRootFilesystem is not true", owner)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", owner)
	}
	if isTrue(sc.Privileged) {
		t.Errorf("%s: privileged", owner)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("%s: capabilities are not exactly drop [ALL]: %+v", owner, sc.Capabilities)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: container seccompProfile is not RuntimeDefault", owner)
	}
	if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("%s: no memory request and limit", owner)
	}
}

func checkTmp(t *testing.T, owner string, pod *corev1.PodSpec, c corev1.Container) {
	t.Helper()
	vol := ""
	for _, m := range c.VolumeMounts {
		if m.MountPath == "/tmp" {
			vol = m.Name
		}
	}
	for _, v := range pod.Volumes {
		if v.Name == vol && v.EmptyDir != nil {
			return
		}
	}
	t.Errorf("%s: /tmp is not an emptyDir (the root filesystem is read-only)", owner)
}

// checkSecretHandling: every secret reaches the container as a file of a
// Secret volume, named by a --…-file flag, and nothing secret is in env.
func checkSecretHandling(t *testing.T, owner string, pod *corev1.PodSpec, c corev1.Container) {
	t.Helper()
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			t.Errorf("%s: env %s comes from a Secret; secrets must be files", owner, e.Name)
		}
		if secretLooking.MatchString(e.Name) {
			t.Errorf("%s: env %s looks like a secret", owner, e.Name)
		}
	}
	for _, ef := range c.EnvFrom {
		if ef.SecretRef != nil {
			t.Errorf("%s: envFrom a Secret; secrets must be files", owner)
		}
	}
	for _, a := range c.Args {
		for _, secret := range []string{"stripe-api-key", "stripe-webhook-secret", "orb-api-key", "orb-webhook-secret"} {
			if strings.HasPrefix(a, "--"+secret+"=") {
				t.Errorf("%s: secret passed as a flag value: %s", owner, a)
			}
		}
	}

	files := map[string]string{} // path in the container → flag
	for _, a := range fileFlags(c.Args) {
		files[a.path] = a.flag
	}
	mounts := map[string]string{} // volume → mount path
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	provided := map[string]bool{}
	for _, v := range pod.Volumes {
		if v.Secret == nil {
			continue
		}
		dir, ok := mounts[v.Name]
		if !ok {
			t.Errorf("%s: Secret volume %s is not mounted", owner, v.Name)
			continue
		}
		if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o007 != 0 {
			t.Errorf("%s: Secret volume %s is readable by others", owner, v.Name)
		}
		if len(v.Secret.Items) == 0 {
			t.Errorf("%s: Secret volume %s mounts every key; list the ones syncd reads", owner, v.Name)
		}
		for _, it := range v.Secret.Items {
			p := filepath.Join(dir, it.Path)
			provided[p] = true
			if _, ok := files[p]; !ok {
				t.Errorf("%s: Secret key %s is mounted at %s but no --…-file flag reads it", owner, it.Key, p)
			}
		}
	}
	for p, flag := range files {
		if !provided[p] {
			t.Errorf("%s: --%s=%s names a file no Secret volume provides", owner, flag, p)
		}
	}
}

type fileFlag struct{ flag, path string }

func fileFlags(args []string) []fileFlag {
	var out []fileFlag
	for _, a := range args {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if ok && strings.HasPrefix(a, "--") && strings.HasSuffix(name, "-file") {
			out = append(out, fileFlag{name, value})
		}
	}
	return out
}

func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func hasArg(args []string, arg string) bool { return slices.Contains(args, arg) }

func serveContainer(t *testing.T, r rendered) (*appsv1.Deployment, corev1.Container) {
	t.Helper()
	d := one[appsv1.Deployment](t, r)
	return d, d.Spec.Template.Spec.Containers[0]
}

func migrateJob(t *testing.T, r rendered) *batchv1.Job {
	t.Helper()
	for _, j := range all[batchv1.Job](r) {
		if strings.HasSuffix(j.Name, "-migrate") {
			return j
		}
	}
	t.Fatal("no migrate Job")
	return nil
}

func checkDefault(t *testing.T, r rendered) {
	d, c := serveContainer(t, r)
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("replicas = %v, want at least 2", d.Spec.Replicas)
	}
	if c.Args[0] != "serve" {
		t.Errorf("serve container args start with %q", c.Args[0])
	}

	// Probes on the admin port.
	port := map[string]int32{}
	for _, p := range c.Ports {
		port[p.Name] = p.ContainerPort
	}
	if port["http"] != 8080 || port["admin"] != 9090 {
		t.Errorf("container ports = %v, want http 8080 and admin 9090", port)
	}
	if v, _ := flagValue(c.Args, "listen"); v != ":8080" {
		t.Errorf("--listen = %q, want :8080", v)
	}
	if v, _ := flagValue(c.Args, "admin-listen"); v != ":9090" {
		t.Errorf("--admin-listen = %q, want :9090", v)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"liveness", c.LivenessProbe, "/healthz"},
		{"readiness", c.ReadinessProbe, "/readyz"},
		{"startup", c.StartupProbe, "/readyz"},
	} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no %s httpGet probe", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "admin" {
			t.Errorf("%s probe = %s on %s, want %s on admin", p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
		}
	}

	// SIGTERM drains within the grace period.
	timeout, ok := flagValue(c.Args, "shutdown-timeout")
	if !ok {
		t.Fatal("no --shutdown-timeout")
	}
	drain, err := time.ParseDuration(timeout)
	if err != nil {
		t.Fatal(err)
	}
	var preStop time.Duration
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		preStop = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	grace := time.Duration(*d.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	if grace <= drain+preStop {
		t.Errorf("terminationGracePeriodSeconds %v does not exceed --shutdown-timeout %v + preStop %v", grace, drain, preStop)
	}

	svc := one[corev1.Service](t, r)
	svcPorts := map[string]string{}
	for _, p := range svc.Spec.Ports {
		svcPorts[p.Name] = p.TargetPort.String()
	}
	if svcPorts["http"] != "http" || svcPorts["admin"] != "admin" {
		t.Errorf("Service ports = %v", svcPorts)
	}

	checkStartupProbe(t, c)

	pdb := one[policyv1.PodDisruptionBudget](t, r)
	if !labelsMatch(pdb.Spec.Selector, d.Spec.Template.Labels) {
		t.Error("the PodDisruptionBudget does not select the serve pods")
	}
	checkDrainable(t, pdb, int(*d.Spec.Replicas))
	np := one[networkingv1.NetworkPolicy](t, r)
	checkNetworkPolicy(t, np, d.Spec.Template.Labels)

	mj := migrateJob(t, r)
	if hooks := mj.Annotations["helm.sh/hook"]; hooks != "pre-install,pre-upgrade" {
		t.Errorf("migrate Job hook = %q", hooks)
	}
	if args := mj.Spec.Template.Spec.Containers[0].Args; args[0] != "migrate" {
		t.Errorf("migrate Job args = %v", args)
	}
	for _, k := range []string{"Ingress", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"} {
		if slices.Contains(r.kinds(), k) {
			t.Errorf("%s rendered by default; it is optional", k)
		}
	}
	// The weekly sweep is on, but without an API key there is nothing to
	// sweep with (TestSweepEveryProvider renders it with keys).
	if slices.Contains(r.kinds(), "CronJob") {
		t.Error("a sweep CronJob without any API key")
	}
	if n := len(all[batchv1.Job](r)); n != 1 {
		t.Errorf("%d Jobs by default, want only the migration", n)
	}
}

func labelsMatch(sel *metav1.LabelSelector, labels map[string]string) bool {
	if sel == nil || len(sel.MatchLabels) == 0 {
		return false
	}
	for k, v := range sel.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func checkNetworkPolicy(t *testing.T, np *networkingv1.NetworkPolicy, serveLabels map[string]string) {
	t.Helper()
	if !labelsMatch(&np.Spec.PodSelector, serveLabels) {
		t.Error("the NetworkPolicy does not select the serve pods")
	}
	ingress := map[int32]bool{}
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			ingress[p.Port.IntVal] = true
		}
	}
	if !ingress[8080] || !ingress[9090] || len(ingress) != 2 {
		t.Errorf("NetworkPolicy ingress ports = %v, want 8080 and 9090", ingress)
	}
	egress := map[int32]bool{}
	for _, rule := range np.Spec.Egress {
		for _, p := range rule.Ports {
			egress[p.Port.IntVal] = true
		}
	}
	for _, p := range []int32{53, 9000, 443} {
		if !egress[p] {
			t.Errorf("NetworkPolicy allows no egress to port %d", p)
		}
	}
}

func checkExistingSecret(t *testing.T, r rendered) {
	if slices.Contains(r.kinds(), "Secret") {
		t.Error("a Secret is rendered although secrets.existingSecret is set")
	}
	d, c := serveContainer(t, r)
	want := map[string]string{ // flag → key in the existing Secret
		"stripe-api-key":        "STRIPE_API_KEY",
		"stripe-webhook-secret": "STRIPE_WEBHOOK_SECRET",
		"orb-api-key":           "ORB_API_KEY",
		"orb-webhook-secret":    "ORB_WEBHOOK_SECRET",
		"clickhouse-dsn":        "CLICKHOUSE_DSN",
	}
	checkSecretFiles(t, "serve", &d.Spec.Template.Spec, c, want)
	if _, ok := flagValue(c.Args, "clickhouse-dsn"); ok {
		t.Error("--clickhouse-dsn is passed although the DSN comes from the Secret")
	}
	if v, _ := flagValue(c.Args, "rate-limit"); v != "50" {
		t.Errorf("--rate-limit = %q, want 50", v)
	}
	if v, _ := flagValue(c.Args, "stripe-accounts"); v != "all" {
		t.Errorf("--stripe-accounts = %q, want all", v)
	}
	if !strings.HasSuffix(c.Image, ":1.2.3") {
		t.Errorf("image = %s, want tag 1.2.3", c.Image)
	}
	// Both providers' keys are there, so by default both are swept weekly.
	if got := sweptProviders(sweeps(t, r)); !slices.Equal(got, []string{"orb", "stripe"}) {
		t.Errorf("swept by default: %v, want orb and stripe", got)
	}
	checkOneBudget(t, r, "50")

	mj := migrateJob(t, r)
	checkSecretFiles(t, "migrate", &mj.Spec.Template.Spec, mj.Spec.Template.Spec.Containers[0],
		map[string]string{"clickhouse-dsn": "CLICKHOUSE_DSN"})
	for _, a := range mj.Spec.Template.Spec.Containers[0].Args {
		if strings.Contains(a, "stripe") || strings.Contains(a, "orb") || strings.Contains(a, "rate-limit") {
			t.Errorf("migrate gets a flag it does not accept: %s", a)
		}
	}
}

// checkSecretFiles asserts that exactly the wanted secrets are mounted from
// the existing Secret and passed as --<flag>-file.
func checkSecretFiles(t *testing.T, what string, pod *corev1.PodSpec, c corev1.Container, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	for _, v := range pod.Volumes {
		if v.Secret == nil {
			continue
		}
		if v.Secret.SecretName != "syncd-credentials" {
			t.Errorf("%s: Secret volume from %q, want the existing syncd-credentials", what, v.Secret.SecretName)
		}
		for _, it := range v.Secret.Items {
			got[it.Path] = it.Key
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: mounted secret files = %v, want %v", what, got, want)
	}
	for flag := range want {
		if v, _ := flagValue(c.Args, flag+"-file"); v != secretDir+"/"+flag {
			t.Errorf("%s: --%s-file = %q, want %s/%s", what, flag, v, secretDir, flag)
		}
	}
	if n := len(fileFlags(c.Args)); n != len(want) {
		t.Errorf("%s: %d --…-file flags, want %d: %v", what, n, len(want), c.Args)
	}
}

func checkMonitoring(t *testing.T, r rendered) {
	d, _ := serveContainer(t, r)
	if d.Spec.Replicas != nil {
		t.Error("Deployment sets replicas although the HPA owns them")
	}
	hpa := one[autoscalingv2.HorizontalPodAutoscaler](t, r)
	if hpa.Spec.ScaleTargetRef.Name != d.Name || hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 2 {
		t.Errorf("HPA = %+v", hpa.Spec)
	}
	checkHPAOnCPU(t, hpa, 60)
	checkDrainable(t, one[policyv1.PodDisruptionBudget](t, r), int(*hpa.Spec.MinReplicas))

	ing := one[networkingv1.Ingress](t, r)
	for _, rule := range ing.Spec.Rules {
		for _, p := range rule.HTTP.Paths {
			if !strings.HasPrefix(p.Path, "/webhooks/") {
				t.Errorf("Ingress exposes %s; only /webhooks/ belongs on the internet", p.Path)
			}
			if p.Backend.Service == nil || p.Backend.Service.Port.Name != "http" {
				t.Errorf("Ingress path %s does not go to the http port", p.Path)
			}
		}
	}

	svc := one[corev1.Service](t, r)
	sm := one[serviceMonitor](t, r)
	if sm.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("ServiceMonitor labels = %v", sm.Labels)
	}
	if !labelsMatch(&sm.Spec.Selector, svc.Labels) {
		t.Error("the ServiceMonitor does not select the Service")
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "admin" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints = %+v, want /metrics on admin", sm.Spec.Endpoints)
	}

	pr := one[prometheusRule](t, r)
	var alerts []string
	for _, g := range pr.Spec.Groups {
		for _, rule := range g.Rules {
			alerts = append(alerts, rule.Alert)
			if err := checkPromQL(rule.Expr); err != nil {
				t.Errorf("alert %s: %v", rule.Alert, err)
			}
			if rule.Labels["severity"] == "" || rule.Labels["team"] != "billing-data" {
				t.Errorf("alert %s labels = %v", rule.Alert, rule.Labels)
			}
			if !strings.Contains(rule.Annotations["runbook_url"], "operations.md#"+strings.ToLower(rule.Alert)) {
				t.Errorf("alert %s has no runbook_url into docs/operations.md", rule.Alert)
			}
			if !strings.Contains(rule.Expr, fmt.Sprintf(`namespace=%q`, namespace)) {
				t.Errorf("alert %s is not scoped to the release: %s", rule.Alert, rule.Expr)
			}
		}
	}
	slices.Sort(alerts)
	want := []string{"SyncdRefreshQueueGrowing", "SyncdSinkErrors", "SyncdSyncLagHigh", "SyncdWebhook5xxRatioHigh"}
	if !slices.Equal(alerts, want) {
		t.Errorf("alerts = %v, want %v", alerts, want)
	}
	if !strings.Contains(string(mustRaw(t, r, "PrometheusRule")), `outcome="unavailable"`) {
		t.Error("the 5xx alert does not count outcome=\"unavailable\" (the 503 answer)")
	}
}

func mustRaw(t *testing.T, r rendered, kind string) []byte {
	t.Helper()
	for _, m := range r {
		if m.kind == kind {
			return m.raw
		}
	}
	t.Fatalf("no %s", kind)
	return nil
}

func checkCronJob(t *testing.T, r rendered) {
	cj := one[batchv1.CronJob](t, r)
	// Stripe's CronJob keeps the name it had before there was one per
	// provider (runbooks create Jobs from it).
	if cj.Name != release+"-syncd-full-backfill" || cj.Labels["syncd.io/provider"] != "stripe" {
		t.Errorf("CronJob %s labelled %v, want %s-syncd-full-backfill for stripe", cj.Name, cj.Labels, release)
	}
	if cj.Spec.Schedule != "30 2 * * 6" || cj.Spec.ConcurrencyPolicy != batchv1.ForbidConcurrent {
		t.Errorf("CronJob schedule %q policy %q", cj.Spec.Schedule, cj.Spec.ConcurrencyPolicy)
	}
	c := cj.Spec.JobTemplate.Spec.Template.Spec.Containers[0]
	if c.Args[0] != "backfill" || !hasArg(c.Args, "--full") || !hasArg(c.Args, "--concurrency=4") || !hasArg(c.Args, "--provider=stripe") {
		t.Errorf("CronJob args = %v, want backfill --full --provider=stripe --concurrency=4", c.Args)
	}
	for _, a := range c.Args {
		if strings.Contains(a, "webhook") || strings.Contains(a, "listen") {
			t.Errorf("backfill gets a serve-only flag: %s", a)
		}
	}

	// Created from values: one Secret for the release, one hook Secret the
	// migration can read before the release's resources exist.
	secrets := all[corev1.Secret](r)
	if len(secrets) != 2 {
		t.Fatalf("%d Secrets, want the release's and the migration hook's", len(secrets))
	}
	var main *corev1.Secret
	for _, s := range secrets {
		if s.Annotations["helm.sh/hook"] == "" {
			main = s
		} else if len(s.StringData) != 1 || s.StringData["clickhouse-dsn"] == "" {
			t.Errorf("migration hook Secret holds %d keys, want only the DSN", len(s.StringData))
		}
	}
	if main == nil || main.StringData["stripe-webhook-secret"] != "whsec_old,whsec_new" || main.StringData["stripe-api-key"] != "sk_test_placeholder" {
		t.Fatalf("release Secret = %+v", main)
	}
	if _, ok := main.StringData["orb-api-key"]; ok {
		t.Error("an Orb key is stored although Orb is off")
	}
	d, c := serveContainer(t, r)
	if d.Spec.Template.Annotations["checksum/secret"] == "" {
		t.Error("the serve pods do not roll when the created Secret changes")
	}
	if v, _ := flagValue(c.Args, "stripe-webhook-secret-file"); v != secretDir+"/stripe-webhook-secret" {
		t.Errorf("--stripe-webhook-secret-file = %q", v)
	}
	mj := migrateJob(t, r)
	for _, v := range mj.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName != mj.Name {
			t.Errorf("migrate Job reads Secret %s, which does not exist yet at pre-install", v.Secret.SecretName)
		}
	}
}

func checkBackfillJob(t *testing.T, r rendered) {
	var job *batchv1.Job
	for _, j := range all[batchv1.Job](r) {
		if !strings.HasSuffix(j.Name, "-migrate") {
			job = j
		}
	}
	if job == nil {
		t.Fatal("no backfill Job")
	}
	if job.Name != release+"-syncd-backfill-outage-1" {
		t.Errorf("backfill Job name = %s", job.Name)
	}
	c := job.Spec.Template.Spec.Containers[0]
	for _, want := range []string{"backfill", "--since=36h", "--provider=stripe", "--customer=cus_123"} {
		if !hasArg(c.Args, want) {
			t.Errorf("backfill Job args %v lack %s", c.Args, want)
		}
	}
	checkSecretFiles(t, "backfill", &job.Spec.Template.Spec, c, map[string]string{"stripe-api-key": "stripe-api-key"})
}

// TestBackfillOneLiner renders the Job exactly as docs/operations.md tells an
// operator to, and checks the documented command is still the one in the docs.
func TestBackfillOneLiner(t *testing.T) {
	r := template(t, "--set", "backfillJob.enabled=true,backfillJob.since=36h", "--show-only", "templates/backfill-job.yaml")
	if len(r) != 1 {
		t.Fatalf("rendered %v, want only the Job", r.kinds())
	}
	job := one[batchv1.Job](t, r)
	if !regexp.MustCompile(`^billing-syncd-backfill-\d{8}-\d{4}$`).MatchString(job.Name) {
		t.Errorf("Job name %s does not carry the render time", job.Name)
	}
	if !hasArg(job.Spec.Template.Spec.Containers[0].Args, "--since=36h") {
		t.Errorf("args = %v", job.Spec.Template.Spec.Containers[0].Args)
	}
	for _, doc := range []string{filepath.Join("..", "..", "docs", "operations.md"), filepath.Join(chartDir, "README.md")} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte("--set backfillJob.enabled=true,backfillJob.since=")) || !bytes.Contains(b, []byte("--show-only templates/backfill-job.yaml")) {
			t.Errorf("%s does not document the backfill one-liner", doc)
		}
	}
}

// TestSchemaRejectsBadValues: values.schema.json fails bad values at install
// time, before anything reaches the cluster.
func TestSchemaRejectsBadValues(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "invalid", "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no invalid value sets")
	}
	wantInError := map[string]string{
		"replicas-string":        "replicaCount",
		"unknown-key":            "replicas",
		"bad-log-format":         "logFormat",
		"backfill-without-since": "since",
		"sweep-unknown-provider": "providers",
	}
	for _, f := range files {
		name := cmp(f, "")
		t.Run(name, func(t *testing.T) {
			out, err := runHelm(t, "template", release, chartDir, "--namespace", namespace, "--kube-version", kubeVersion, "-f", f)
			if err == nil {
				t.Fatalf("helm accepted %s:\n%s", f, out)
			}
			if w := wantInError[name]; w == "" || !strings.Contains(err.Error(), w) {
				t.Errorf("error does not mention %q: %v", w, err)
			}
		})
	}
	// The same mistake on the command line.
	if _, err := runHelm(t, "template", release, chartDir, "--kube-version", kubeVersion, "--set-string", "replicaCount=2"); err == nil {
		t.Error("replicaCount given as a string is accepted")
	}
}

// --- the chart keeps the promises of docs/operations.md, "Scale" ---

// checkStartupProbe: the startup probe asks /readyz, so a pod counts as
// started once it serves (ClickHouse reached, schema current, intake log
// replayed), not merely once the process runs, which is all /healthz says;
// it allows long enough that a start slowed by ClickHouse is not killed
// over and over. Liveness stays on /healthz, which never asks ClickHouse:
// an outage must not restart pods that are running.
func checkStartupProbe(t *testing.T, c corev1.Container) {
	t.Helper()
	sp, lp := c.StartupProbe, c.LivenessProbe
	if sp == nil || sp.HTTPGet == nil || sp.HTTPGet.Path != "/readyz" {
		t.Fatalf("startup probe = %+v, want /readyz", sp)
	}
	window := time.Duration(sp.PeriodSeconds*sp.FailureThreshold) * time.Second
	if window < 5*time.Minute {
		t.Errorf("startup probe gives a pod %v to become ready; a ClickHouse that is slow to answer would restart it over and over", window)
	}
	if window != 10*time.Minute {
		t.Errorf("startup window %v; values.yaml and the README say 10 minutes", window)
	}
	if sp.TimeoutSeconds < 3 {
		t.Errorf("startup probe timeout %ds is below /readyz's 2 s ClickHouse ping", sp.TimeoutSeconds)
	}
	if lp == nil || lp.HTTPGet == nil || lp.HTTPGet.Path != "/healthz" {
		t.Errorf("liveness probe = %+v, want /healthz (never restart a running pod because ClickHouse is down)", lp)
	}
}

func TestStartupProbe(t *testing.T) {
	_, c := serveContainer(t, template(t, "--show-only", "templates/deployment.yaml"))
	checkStartupProbe(t, c)
	_, c = serveContainer(t, template(t, "--show-only", "templates/deployment.yaml", "--set", "startupProbe.enabled=false"))
	if c.StartupProbe != nil {
		t.Error("startupProbe.enabled=false still renders a startup probe")
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("liveness = %+v", c.LivenessProbe)
	}
}

// allowedDisruptions is what the disruption controller allows with every one
// of pods healthy (k8s.io/kubernetes/pkg/controller/disruption).
func allowedDisruptions(t *testing.T, pdb *policyv1.PodDisruptionBudget, pods int) int {
	t.Helper()
	var healthy int // the pods the budget keeps
	switch {
	case pdb.Spec.MaxUnavailable != nil:
		n, err := intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MaxUnavailable, pods, true)
		if err != nil {
			t.Fatal(err)
		}
		healthy = pods - n
	case pdb.Spec.MinAvailable != nil:
		n, err := intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MinAvailable, pods, true)
		if err != nil {
			t.Fatal(err)
		}
		healthy = n
	default:
		t.Fatal("PodDisruptionBudget with neither maxUnavailable nor minAvailable")
	}
	return max(pods-max(healthy, 0), 0)
}

// checkDrainable: with pods serve pods, a node drain may evict one (it
// never waits forever), and with more than one, not all at once.
func checkDrainable(t *testing.T, pdb *policyv1.PodDisruptionBudget, pods int) {
	t.Helper()
	n := allowedDisruptions(t, pdb, pods)
	if n < 1 {
		t.Errorf("with %d serve pods the PodDisruptionBudget %+v allows no eviction: a node drain would wait forever", pods, pdb.Spec)
	}
	if pods > 1 && n >= pods {
		t.Errorf("with %d serve pods the PodDisruptionBudget allows evicting all of them at once", pods)
	}
}

// TestDisruptionBudgetAllowsADrain: whatever the replicas, the rendered
// PodDisruptionBudget lets a node drain proceed; a budget that could not is
// refused at render time rather than discovered during a node upgrade.
func TestDisruptionBudgetAllowsADrain(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  string
		pods int
	}{
		{"default", "", 2},
		{"one replica", "replicaCount=1", 1},
		{"three replicas", "replicaCount=3", 3},
		{"autoscaling", "autoscaling.enabled=true", 2},
		{"autoscaling from one", "autoscaling.enabled=true,autoscaling.minReplicas=1", 1},
		{"percentage, one replica", "replicaCount=1,podDisruptionBudget.maxUnavailable=25%", 1},
		{"minAvailable below the replicas", "podDisruptionBudget.maxUnavailable=null,podDisruptionBudget.minAvailable=1", 2},
		{"minAvailable percentage", "replicaCount=4,podDisruptionBudget.maxUnavailable=null,podDisruptionBudget.minAvailable=50%", 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"--show-only", "templates/pdb.yaml", "--show-only", "templates/deployment.yaml"}
			if tc.set != "" {
				args = append(args, "--set", tc.set)
			}
			r := template(t, args...)
			d, _ := serveContainer(t, r)
			if d.Spec.Replicas != nil && int(*d.Spec.Replicas) != tc.pods {
				t.Fatalf("replicas = %d, want %d", *d.Spec.Replicas, tc.pods)
			}
			pdb := one[policyv1.PodDisruptionBudget](t, r)
			if pdb.Spec.MaxUnavailable != nil && pdb.Spec.MinAvailable != nil {
				t.Error("both maxUnavailable and minAvailable: the API server refuses that")
			}
			checkDrainable(t, pdb, tc.pods)
			if tc.name == "default" && (pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.String() != "1") {
				t.Errorf("default PodDisruptionBudget = %+v, want maxUnavailable 1", pdb.Spec)
			}
		})
	}
	for _, set := range []string{
		"replicaCount=1,podDisruptionBudget.maxUnavailable=null,podDisruptionBudget.minAvailable=1",
		"autoscaling.enabled=true,autoscaling.minReplicas=1,podDisruptionBudget.maxUnavailable=null,podDisruptionBudget.minAvailable=1",
		"podDisruptionBudget.maxUnavailable=0",
		"replicaCount=3,podDisruptionBudget.maxUnavailable=null,podDisruptionBudget.minAvailable=67%",
		"podDisruptionBudget.maxUnavailable=null,podDisruptionBudget.minAvailable=null",
	} {
		if _, err := runHelm(t, "template", release, chartDir, "--kube-version", kubeVersion, "--set", set); err == nil ||
			!strings.Contains(err.Error(), "podDisruptionBudget") {
			t.Errorf("a PodDisruptionBudget that blocks every drain renders (%s): %v", set, err)
		}
	}
	if r := template(t, "--set", "podDisruptionBudget.enabled=false"); slices.Contains(r.kinds(), "PodDisruptionBudget") {
		t.Error("podDisruptionBudget.enabled=false still renders one")
	}
}

// checkHPAOnCPU: the autoscaler follows CPU utilisation (webhook intake is
// CPU-bound) and nothing else.
func checkHPAOnCPU(t *testing.T, hpa *autoscalingv2.HorizontalPodAutoscaler, target int32) {
	t.Helper()
	if len(hpa.Spec.Metrics) != 1 {
		t.Fatalf("HPA metrics = %+v, want CPU utilisation only", hpa.Spec.Metrics)
	}
	m := hpa.Spec.Metrics[0]
	if m.Type != autoscalingv2.ResourceMetricSourceType || m.Resource == nil || m.Resource.Name != corev1.ResourceCPU ||
		m.Resource.Target.Type != autoscalingv2.UtilizationMetricType || m.Resource.Target.AverageUtilization == nil ||
		*m.Resource.Target.AverageUtilization != target {
		t.Errorf("HPA metric = %+v, want CPU at %d%% utilisation", m, target)
	}
}

// TestAutoscaling: off by default; when on, on CPU against the pods' CPU
// request, and never without a metric (an HPA without one falls back to
// a CPU target nobody chose).
func TestAutoscaling(t *testing.T) {
	if slices.Contains(template(t).kinds(), "HorizontalPodAutoscaler") {
		t.Fatal("an HPA by default")
	}
	r := template(t, "--set", "autoscaling.enabled=true")
	d, c := serveContainer(t, r)
	if d.Spec.Replicas != nil {
		t.Error("the Deployment sets replicas although the HPA owns them")
	}
	if c.Resources.Requests.Cpu().IsZero() {
		t.Error("no CPU request: CPU utilisation has nothing to be a share of")
	}
	hpa := one[autoscalingv2.HorizontalPodAutoscaler](t, r)
	if hpa.Spec.ScaleTargetRef.Kind != "Deployment" || hpa.Spec.ScaleTargetRef.Name != d.Name {
		t.Errorf("HPA scales %+v", hpa.Spec.ScaleTargetRef)
	}
	checkHPAOnCPU(t, hpa, 70)
	for _, tc := range []struct{ set, want string }{
		{"autoscaling.enabled=true,autoscaling.targetCPUUtilizationPercentage=null", "needs a metric"},
		{"autoscaling.enabled=true,resources.requests.cpu=null", "resources.requests.cpu"},
		{"autoscaling.enabled=true,autoscaling.minReplicas=4,autoscaling.maxReplicas=3", "minReplicas"},
	} {
		if _, err := runHelm(t, "template", release, chartDir, "--kube-version", kubeVersion, "--set", tc.set); err == nil ||
			!strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s renders, or fails without saying %q: %v", tc.set, tc.want, err)
		}
	}
}

// sweeps returns the full-backfill CronJobs by the provider they sweep,
// checking each one's command.
func sweeps(t *testing.T, r rendered) map[string]*batchv1.CronJob {
	t.Helper()
	out := map[string]*batchv1.CronJob{}
	for _, cj := range all[batchv1.CronJob](r) {
		c := cj.Spec.JobTemplate.Spec.Template.Spec.Containers[0]
		p, _ := flagValue(c.Args, "provider")
		if c.Args[0] != "backfill" || !hasArg(c.Args, "--full") || p == "" {
			t.Errorf("CronJob %s runs %v, want backfill --full --provider=…", cj.Name, c.Args)
		}
		if cj.Labels["syncd.io/provider"] != p {
			t.Errorf("CronJob %s sweeps %s but is labelled %q", cj.Name, p, cj.Labels["syncd.io/provider"])
		}
		if out[p] != nil {
			t.Errorf("two CronJobs sweep %s", p)
		}
		out[p] = cj
		if len(cj.Name) > 52 {
			t.Errorf("CronJob name %q is longer than 52 characters", cj.Name)
		}
	}
	return out
}

func sweptProviders(m map[string]*batchv1.CronJob) []string {
	var ps []string
	for p := range m {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// checkSweepBoth: with both providers on, each gets a weekly sweep of its
// own, with only its own API key, and every pod spends the same budget.
func checkSweepBoth(t *testing.T, r rendered) {
	s := sweeps(t, r)
	if got := sweptProviders(s); !slices.Equal(got, []string{"orb", "stripe"}) {
		t.Fatalf("swept providers = %v, want orb and stripe", got)
	}
	if s["orb"].Name != release+"-syncd-full-backfill-orb" || s["stripe"].Name != release+"-syncd-full-backfill" {
		t.Errorf("CronJob names %s, %s", s["stripe"].Name, s["orb"].Name)
	}
	for p, key := range map[string]string{"stripe": "stripe-api-key", "orb": "orb-api-key"} {
		pod := &s[p].Spec.JobTemplate.Spec.Template.Spec
		c := pod.Containers[0]
		checkSecretFiles(t, "sweep "+p, pod, c, map[string]string{key: key})
		other := map[string]string{"stripe": "--orb-", "orb": "--stripe-"}[p]
		for _, a := range c.Args {
			if strings.HasPrefix(a, other) {
				t.Errorf("the %s sweep gets the other provider's flag %s", p, a)
			}
		}
	}
	checkOneBudget(t, r, "50")
}

// checkOneBudget: every pod that spends an API budget (serve, backfill) is
// given the same --rate-limit, the fleet's: the processes split it among
// themselves, so a pod given another value would upset the split.
func checkOneBudget(t *testing.T, r rendered, want string) {
	t.Helper()
	for owner, pod := range podSpecs(r) {
		c := pod.Containers[0]
		if c.Args[0] == "migrate" {
			continue
		}
		if got, _ := flagValue(c.Args, "rate-limit"); got != want {
			t.Errorf("%s: --rate-limit = %q, want the fleet's %q", owner, got, want)
		}
	}
}

// TestSweepEveryProvider: the periodic full sweep covers every provider
// that is configured, Orb included, and refuses one it has no key for.
func TestSweepEveryProvider(t *testing.T) {
	// The sweep is on by default: no value here turns it on.
	stripeKey := "secrets.stripeApiKey=sk_test_placeholder"
	orbKey := "orb.enabled=true,secrets.orbApiKey=orb_placeholder"
	for _, tc := range []struct {
		name string
		sets []string
		want []string
	}{
		{"stripe only", []string{stripeKey}, []string{"stripe"}},
		{"orb configured", []string{stripeKey, orbKey}, []string{"orb", "stripe"}},
		{"orb webhooks without an orb key", []string{stripeKey, "orb.enabled=true,secrets.orbWebhookSecret=orb_whsec"}, []string{"stripe"}},
		{"orb key but orb off", []string{stripeKey, "secrets.orbApiKey=orb_placeholder"}, []string{"stripe"}},
		{"orb alone", []string{"stripe.enabled=false", orbKey}, []string{"orb"}},
		{"listed", []string{stripeKey, orbKey, "backfillCronJob.providers={orb}"}, []string{"orb"}},
		{"deprecated provider", []string{stripeKey, orbKey, "backfillCronJob.provider=orb"}, []string{"orb"}},
		{"existing Secret", []string{"secrets.existingSecret=creds,orb.enabled=true"}, []string{"orb", "stripe"}},
		{"off", []string{stripeKey, orbKey, "backfillCronJob.enabled=false"}, nil},
		{"no key at all", []string{"secrets.clickhouseDSN=clickhouse://syncd:password@clickhouse:9000/syncd"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var args []string
			for _, s := range tc.sets {
				args = append(args, "--set", s)
			}
			r := template(t, args...)
			checkCommon(t, r)
			s := sweeps(t, r)
			if got := sweptProviders(s); !slices.Equal(got, tc.want) {
				t.Fatalf("swept providers = %v, want %v", got, tc.want)
			}
			if cj := s["orb"]; cj != nil {
				c := cj.Spec.JobTemplate.Spec.Template.Spec.Containers[0]
				if !hasArg(c.Args, "--provider=orb") || !hasArg(c.Args, "--orb-api-key-file="+secretDir+"/orb-api-key") {
					t.Errorf("Orb sweep args = %v", c.Args)
				}
			}
		})
	}

	long := strings.Repeat("x", 63)
	s := sweeps(t, template(t, "--set", stripeKey, "--set", orbKey, "--set", "fullnameOverride="+long))
	if len(s) != 2 || s["orb"].Name == s["stripe"].Name {
		t.Errorf("with a 63-character fullname: %v", s)
	}

	for _, tc := range []struct {
		name string
		sets []string
		want string
	}{
		{"orb listed without its key", []string{stripeKey, "backfillCronJob.providers={stripe,orb}"}, "no orb API key"},
		{"provider and providers", []string{stripeKey, orbKey, "backfillCronJob.provider=orb,backfillCronJob.providers={stripe}"}, "not both"},
		{"unknown provider", []string{stripeKey, "backfillCronJob.provider=paypal"}, "provider"},
		{"listed twice", []string{stripeKey, "backfillCronJob.providers={stripe,stripe}"}, "providers"},
	} {
		t.Run("refused/"+tc.name, func(t *testing.T) {
			args := []string{"template", release, chartDir, "--kube-version", kubeVersion}
			for _, s := range tc.sets {
				args = append(args, "--set", s)
			}
			if _, err := runHelm(t, args...); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("renders, or fails without saying %q: %v", tc.want, err)
			}
		})
	}
}

// TestBudgetIsTheFleets: the rate limit the chart documents is the one the
// processes share (docs/operations.md, "Scale"), and every pod that spends
// it gets the same value.
func TestBudgetIsTheFleets(t *testing.T) {
	r := template(t, "--set", "config.rateLimit=30,secrets.existingSecret=creds,orb.enabled=true,replicaCount=3,"+
		"config.endpointRateLimit=12,config.maxConcurrentRequests=8,config.rateLimitScope=account")
	if n := len(all[batchv1.CronJob](r)); n != 2 {
		t.Fatalf("%d CronJobs, want one per provider", n)
	}
	checkOneBudget(t, r, "30")
	// The other limits of the budget are the fleet's too.
	for owner, pod := range podSpecs(r) {
		if c := pod.Containers[0]; c.Args[0] != "migrate" {
			for flag, want := range map[string]string{"endpoint-rate-limit": "12", "max-concurrent-requests": "8", "rate-limit-scope": "account"} {
				if got, _ := flagValue(c.Args, flag); got != want {
					t.Errorf("%s: --%s = %q, want %q", owner, flag, got, want)
				}
			}
		}
	}
	if _, c := serveContainer(t, template(t, "--show-only", "templates/deployment.yaml")); hasArg(c.Args, "--rate-limit") {
		t.Errorf("a --rate-limit by default: %v", c.Args)
	}

	docs := readValueDocs(t)
	rate := docs["config.rateLimit"]
	for _, want := range []string{"whole fleet", "not per pod", "backfill", "equal share"} {
		if !strings.Contains(rate.desc, want) {
			t.Errorf("config.rateLimit's description does not say %q: %s", want, rate.desc)
		}
	}
	for _, f := range []string{filepath.Join(chartDir, "values.yaml"), filepath.Join(chartDir, "README.md")} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, stale := range []string{"its own budget", "per pod)", "| `minAvailable: 1` |", "startup and liveness `/healthz`"} {
			if bytes.Contains(b, []byte(stale)) {
				t.Errorf("%s still says %q", f, stale)
			}
		}
	}
}

// --- the README's table of values ---

var updateReadme = flag.Bool("update-readme", false, "rewrite the values table of the chart README from values.yaml")

type valueDoc struct{ key, def, desc string }

// readValueDocs reads the `# --` comments of values.yaml: each documents the
// key that follows it (its path from the indentation), continued by the
// comment lines up to that key.
func readValueDocs(t *testing.T) map[string]valueDoc {
	t.Helper()
	docs := map[string]valueDoc{}
	for _, d := range valueDocList(t) {
		docs[d.key] = d
	}
	return docs
}

func valueDocList(t *testing.T) []valueDoc {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	keyLine := regexp.MustCompile(`^( *)([A-Za-z0-9_]+):`)
	type level struct {
		indent int
		key    string
	}
	var (
		stack   []level
		desc    []string
		inDesc  bool
		docs    []valueDoc
		current = func() string {
			var ks []string
			for _, l := range stack {
				ks = append(ks, l.key)
			}
			return strings.Join(ks, ".")
		}
	)
	for _, line := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "# --"):
			desc, inDesc = []string{strings.TrimSpace(strings.TrimPrefix(trimmed, "# --"))}, true
		case strings.HasPrefix(trimmed, "#"):
			if inDesc {
				desc = append(desc, strings.TrimSpace(strings.TrimPrefix(trimmed, "#")))
			}
		default:
			m := keyLine.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			indent := len(m[1])
			for len(stack) > 0 && stack[len(stack)-1].indent >= indent {
				stack = stack[:len(stack)-1]
			}
			stack = append(stack, level{indent, m[2]})
			if inDesc {
				key := current()
				docs = append(docs, valueDoc{key: key, def: defaultCell(t, values, key), desc: strings.Join(desc, " ")})
			}
			desc, inDesc = nil, false
		}
	}
	return docs
}

// defaultCell is how the README shows a default: scalars and lists of
// scalars as YAML flow, anything larger as "see values.yaml".
func defaultCell(t *testing.T, values map[string]any, key string) string {
	t.Helper()
	var v any = values
	for _, k := range strings.Split(key, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("values.yaml: %s is not under a map", key)
		}
		if v, ok = m[k]; !ok {
			t.Fatalf("values.yaml documents %s, which it does not hold", key)
		}
	}
	scalar := func(v any) (string, bool) {
		switch v := v.(type) {
		case nil:
			return "null", true
		case bool:
			return strconv.FormatBool(v), true
		case float64:
			return strconv.FormatFloat(v, 'f', -1, 64), true
		case string:
			b, _ := json.Marshal(v)
			return string(b), true
		}
		return "", false
	}
	if s, ok := scalar(v); ok {
		return "`" + s + "`"
	}
	switch v := v.(type) {
	case []any:
		var items []string
		for _, it := range v {
			s, ok := scalar(it)
			if !ok {
				return "see values.yaml"
			}
			items = append(items, s)
		}
		return "`[" + strings.Join(items, ", ") + "]`"
	case map[string]any:
		if len(v) == 0 {
			return "`{}`"
		}
	}
	return "see values.yaml"
}

// TestReadmeValuesTable: the README's table of values is exactly what
// values.yaml documents, key by key (go test -run TestReadmeValuesTable
// -update-readme rewrites it).
func TestReadmeValuesTable(t *testing.T) {
	var want []string
	for _, d := range valueDocList(t) {
		want = append(want, fmt.Sprintf("| `%s` | %s | %s |", d.key, d.def, strings.ReplaceAll(d.desc, "|", `\|`)))
	}
	path := filepath.Join(chartDir, "README.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	header := slices.Index(lines, "| key | default | description |")
	if header < 0 || header+1 >= len(lines) || lines[header+1] != "|---|---|---|" {
		t.Fatal("README has no values table (| key | default | description |)")
	}
	start := header + 2
	end := start
	for end < len(lines) && strings.HasPrefix(lines[end], "|") {
		end++
	}
	got := lines[start:end]
	if *updateReadme {
		out := slices.Concat(lines[:start], want, lines[end:])
		if err := os.WriteFile(path, []byte(strings.Join(out, "\n")), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	for i := 0; i < max(len(got), len(want)); i++ {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Errorf("README values table row %d:\n got  %s\n want %s\n(run go test ./deploy/helm -run TestReadmeValuesTable -update-readme)", i+1, g, w)
			return
		}
	}
}

// --- PromQL ---

var (
	promString   = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	promMatchers = regexp.MustCompile(`\{[^{}]*\}`)
	promRange    = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`(?i)\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promKeywords = map[string]bool{
		"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true, "without": true,
		"on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true,
		"atan2": true, "start": true, "end": true,
	}
)

// metricNames returns the metric names an expression selects. It is not a
// PromQL parser: it drops strings, label matchers, ranges and grouping
// labels, then keeps identifiers that are not functions or keywords.
func metricNames(expr string) []string {
	s := promString.ReplaceAllString(expr, `""`)
	s = promMatchers.ReplaceAllString(s, "")
	s = promRange.ReplaceAllString(s, "")
	s = promGrouping.ReplaceAllString(s, "")
	var names []string
	for _, loc := range promIdent.FindAllStringIndex(s, -1) {
		id := s[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsAny(s[loc[0]-1:loc[0]], "0123456789.$") {
			continue // a number's exponent, a duration, or a Grafana variable
		}
		if rest := strings.TrimLeft(s[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") {
			continue // a function or an aggregation
		}
		if promKeywords[strings.ToLower(id)] {
			continue
		}
		names = append(names, id)
	}
	return names
}

func checkPromQL(expr string) error {
	names := metricNames(expr)
	if len(names) == 0 {
		return fmt.Errorf("selects no metric: %s", expr)
	}
	known := seriesNames()
	for _, n := range names {
		if _, ok := known[n]; !ok {
			return fmt.Errorf("uses %s, which syncd does not export: %s", n, expr)
		}
	}
	return nil
}

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`sum by (provider, outcome) (rate(syncd_webhook_requests_total{job=~"$job", outcome!="ok"}[$__rate_interval]))`, []string{"syncd_webhook_requests_total"}},
		{`histogram_quantile(0.99, sum by (le) (rate(syncd_webhook_ack_seconds_bucket[5m])))`, []string{"syncd_webhook_ack_seconds_bucket"}},
		{`a_total / on(pod) group_left(version) b_info > 1e3 and c offset 5m`, []string{"a_total", "b_info", "c"}},
		{`sum(rate(x[5m])) without (le) > bool 0`, []string{"x"}},
	} {
		if got := metricNames(tc.expr); !slices.Equal(got, tc.want) {
			t.Errorf("metricNames(%s) = %v, want %v", tc.expr, got, tc.want)
		}
	}
	if checkPromQL(`rate(syncd_webhook_ack_seconds[5m])`) == nil {
		t.Error("a histogram's bare name is accepted; it has no series")
	}
	if checkPromQL(`up{job="syncd"}`) == nil {
		t.Error("a metric syncd does not export is accepted")
	}
}

// --- the Grafana dashboard ---

type grafanaPanel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource json.RawMessage `json:"datasource"`
	Targets    []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

func TestDashboard(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "grafana", "syncd-operations.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID           string         `json:"uid"`
		Title         string         `json:"title"`
		SchemaVersion int            `json:"schemaVersion"`
		Panels        []grafanaPanel `json:"panels"`
		Templating    struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	if d.SchemaVersion < 36 || d.UID == "" || d.Title == "" {
		t.Errorf("schemaVersion %d, uid %q, title %q", d.SchemaVersion, d.UID, d.Title)
	}

	var hasDatasource bool
	used := map[string]bool{}
	labelValues := regexp.MustCompile(`^label_values\((.*),\s*[A-Za-z_]+\)$`)
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && string(v.Query) == `"prometheus"` {
			hasDatasource = true
		}
		if v.Type != "query" {
			continue
		}
		var q string
		if json.Unmarshal(v.Query, &q) != nil {
			var obj struct{ Query string }
			_ = json.Unmarshal(v.Query, &obj)
			q = obj.Query
		}
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(metric, label)", v.Name, q)
			continue
		}
		if err := checkPromQL(m[1]); err != nil {
			t.Errorf("variable %s: %v", v.Name, err)
		}
	}
	if !hasDatasource {
		t.Error("no Prometheus datasource variable")
	}

	ids := map[int]bool{}
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel id %d is used twice", p.ID)
			}
			ids[p.ID] = true
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no queries", p.Title)
			}
			if !bytes.Contains(p.Datasource, []byte("${datasource}")) {
				t.Errorf("panel %q does not use the datasource variable", p.Title)
			}
			for _, tg := range p.Targets {
				if err := checkPromQL(tg.Expr); err != nil {
					t.Errorf("panel %q: %v", p.Title, err)
				}
				for _, n := range metricNames(tg.Expr) {
					used[seriesNames()[n]] = true
				}
			}
		}
	}
	walk(d.Panels)
	for name := range ExportedMetrics {
		if !used[name] {
			t.Errorf("no panel shows %s", name)
		}
	}
}

// TestExportedMetricsMatchTheBinary keeps ExportedMetrics honest: it is
// exactly the set of syncd_ families the metrics package registers, with
// their types, so a dashboard or alert cannot name a series syncd lacks.
func TestExportedMetricsMatchTheBinary(t *testing.T) {
	families, err := metrics.New().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "syncd_") {
			got[f.GetName()] = strings.ToLower(f.GetType().String())
		}
	}
	for name, typ := range ExportedMetrics {
		if got[name] != typ {
			t.Errorf("%s: the binary exports type %q, the list says %q", name, got[name], typ)
		}
	}
	for name := range got {
		if _, ok := ExportedMetrics[name]; !ok {
			t.Errorf("%s is exported but missing from ExportedMetrics", name)
		}
	}
}

// TestClickHouseCluster: the cluster and its quorum reach every syncd
// command the chart runs (migrate creates the tables ON CLUSTER; serve,
// backfill and verify write with the quorum), each command line parses as
// syncd parses it, and neither flag appears by default.
func TestClickHouseCluster(t *testing.T) {
	for owner, pod := range podSpecs(template(t)) {
		for _, flag := range []string{"clickhouse-cluster", "clickhouse-insert-quorum"} {
			if v, ok := flagValue(pod.Containers[0].Args, flag); ok {
				t.Errorf("%s: --%s=%s by default", owner, flag, v)
			}
		}
	}
	r := template(t, "--set", "config.clickhouseCluster=prod,config.clickhouseInsertQuorum=2,secrets.existingSecret=creds")
	pods := podSpecs(r)
	commands := map[string]bool{}
	for owner, pod := range pods {
		args := pod.Containers[0].Args
		commands[args[0]] = true
		if v, _ := flagValue(args, "clickhouse-cluster"); v != "prod" {
			t.Errorf("%s: --clickhouse-cluster = %q, want prod", owner, v)
		}
		if v, _ := flagValue(args, "clickhouse-insert-quorum"); v != "2" {
			t.Errorf("%s: --clickhouse-insert-quorum = %q, want 2", owner, v)
		}
		env := func(string) string { return "" }
		cfg, err := config.Parse(args[0], args[1:], env, io.Discard, time.Now())
		if err != nil {
			// Secrets are files the pod mounts; only a missing one may fail.
			if !strings.Contains(err.Error(), "/etc/syncd/secrets/") {
				t.Errorf("%s: syncd %s refuses the chart's arguments: %v", owner, args[0], err)
			}
			continue
		}
		if cfg.ClickHouseCluster != "prod" || cfg.ClickHouseInsertQuorum != 2 {
			t.Errorf("%s: parsed cluster %q quorum %d", owner, cfg.ClickHouseCluster, cfg.ClickHouseInsertQuorum)
		}
	}
	for _, want := range []string{"migrate", "serve", "backfill"} {
		if !commands[want] {
			t.Errorf("no %s pod rendered: %v", want, commands)
		}
	}
	if _, err := runHelm(t, "template", release, chartDir, "--namespace", namespace, "--kube-version", kubeVersion,
		"--set", "config.clickhouseInsertQuorum=0"); err == nil || !strings.Contains(err.Error(), "clickhouseInsertQuorum") {
		t.Errorf("the schema took config.clickhouseInsertQuorum=0 (%v)", err)
	}
}
