package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The manifests in deploy/ are decoded strictly into the subset of the
// Kubernetes and AWS Batch APIs they use (field names as the APIs spell
// them): a misspelt or misplaced field fails, as the API server or the CLI
// would refuse it. Then the shard variables they set are fed, with the index
// each platform sets, to ResolveShard: every index must get its own shard
// and together they must cover the grid.

// k8sObject is a Kubernetes object of the kinds deploy/kubernetes holds.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec yaml.Node         `yaml:"spec"`
	Data map[string]string `yaml:"data"` // ConfigMap
}

type k8sJobSpec struct {
	CompletionMode       string `yaml:"completionMode"`
	Completions          *int   `yaml:"completions"`
	Parallelism          *int   `yaml:"parallelism"`
	BackoffLimit         *int   `yaml:"backoffLimit"`
	BackoffLimitPerIndex *int   `yaml:"backoffLimitPerIndex"`
	MaxFailedIndexes     *int   `yaml:"maxFailedIndexes"`
	Template             struct {
		Metadata struct {
			Labels map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
		Spec struct {
			RestartPolicy   string `yaml:"restartPolicy"`
			SecurityContext struct {
				RunAsNonRoot bool `yaml:"runAsNonRoot"`
				RunAsUser    int  `yaml:"runAsUser"`
				FSGroup      int  `yaml:"fsGroup"`
			} `yaml:"securityContext"`
			Containers []k8sContainer `yaml:"containers"`
			Volumes    []struct {
				Name      string `yaml:"name"`
				ConfigMap *struct {
					Name string `yaml:"name"`
				} `yaml:"configMap"`
				PersistentVolumeClaim *struct {
					ClaimName string `yaml:"claimName"`
				} `yaml:"persistentVolumeClaim"`
				EmptyDir *struct{} `yaml:"emptyDir"`
			} `yaml:"volumes"`
		} `yaml:"spec"`
	} `yaml:"template"`
}

type k8sContainer struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Env   []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"env"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		ReadOnlyRootFilesystem   bool `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation bool `yaml:"allowPrivilegeEscalation"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

type k8sPVCSpec struct {
	AccessModes []string `yaml:"accessModes"`
	Resources   struct {
		Requests map[string]string `yaml:"requests"`
	} `yaml:"resources"`
}

// readK8s decodes every document of a manifest file strictly.
func readK8s(t *testing.T, path string) []k8sObject {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var objs []k8sObject
	for {
		var o k8sObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		objs = append(objs, o)
	}
	return objs
}

func decodeSpec(t *testing.T, o k8sObject, v any) {
	t.Helper()
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	if err := enc.Encode(&o.Spec); err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(&buf)
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s %s: spec: %v", o.Kind, o.Metadata.Name, err)
	}
}

// entrypointCommands are the first arguments deploy/entrypoint.sh knows.
var entrypointCommands = map[string]bool{"serve": true, "grid": true, "grid-shard": true, "grid-merge": true, "txt2img": true}

// checkShards feeds ResolveShard the environment of n array tasks, each
// with its index variable set to i, and checks that they split the grid.
func checkShards(t *testing.T, n int, env map[string]string, indexVar, source string) {
	t.Helper()
	if n < 1 {
		t.Fatalf("array size %d", n)
	}
	seen := map[int]bool{}
	for i := range n {
		getenv := func(k string) string {
			if k == indexVar {
				return strconv.Itoa(i)
			}
			return env[k]
		}
		s, err := ResolveShard("", 0, getenv)
		if err != nil {
			t.Fatalf("task %d: %v", i, err)
		}
		if s.Count != n || s.Source != source || seen[s.Index] {
			t.Fatalf("task %d of %d gets shard %+v", i, n, s)
		}
		seen[s.Index] = true
	}
}

// checkGridArgs checks the arguments of a grid-shard or grid-merge command:
// the output root and the config lie on mounted volumes.
func checkGridArgs(t *testing.T, args []string, mounted func(string) bool) {
	t.Helper()
	if len(args) < 2 || !entrypointCommands[args[0]] {
		t.Fatalf("command %q: want an entrypoint command and its arguments", args)
	}
	if args[0] != "grid-shard" && args[0] != "grid-merge" {
		return
	}
	if !mounted(args[1]) {
		t.Errorf("%s writes %s, which is on no mounted volume", args[0], args[1])
	}
	for i, a := range args {
		if a == "-config" && (i+1 >= len(args) || !mounted(args[i+1])) {
			t.Errorf("-config %q is on no mounted volume", args[i+1:])
		}
	}
}

func under(dir, path string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

func TestKubernetesManifests(t *testing.T) {
	dir := filepath.Join("..", "..", "deploy", "kubernetes")
	objs := readK8s(t, filepath.Join(dir, "grid-job.yaml"))
	objs = append(objs, readK8s(t, filepath.Join(dir, "grid-merge-job.yaml"))...)
	byKind := map[string]map[string]k8sObject{}
	for _, o := range objs {
		want := map[string]string{"Job": "batch/v1", "ConfigMap": "v1", "PersistentVolumeClaim": "v1"}[o.Kind]
		if want == "" || o.APIVersion != want || o.Metadata.Name == "" {
			t.Fatalf("object %s %q (apiVersion %q)", o.Kind, o.Metadata.Name, o.APIVersion)
		}
		if byKind[o.Kind] == nil {
			byKind[o.Kind] = map[string]k8sObject{}
		}
		byKind[o.Kind][o.Metadata.Name] = o
	}
	for _, pvc := range byKind["PersistentVolumeClaim"] {
		var spec k8sPVCSpec
		decodeSpec(t, pvc, &spec)
		if len(spec.AccessModes) != 1 || spec.AccessModes[0] != "ReadWriteMany" {
			t.Errorf("PVC %s: access modes %v; the shards' pods need ReadWriteMany", pvc.Metadata.Name, spec.AccessModes)
		}
	}
	jobs := byKind["Job"]
	if len(jobs) != 2 {
		t.Fatalf("%d Jobs, want the grid and the merge", len(jobs))
	}
	for name, o := range jobs {
		var spec k8sJobSpec
		decodeSpec(t, o, &spec)
		pod := spec.Template.Spec
		if pod.RestartPolicy != "Never" && pod.RestartPolicy != "OnFailure" {
			t.Errorf("job %s: restartPolicy %q", name, pod.RestartPolicy)
		}
		if len(pod.Containers) != 1 {
			t.Fatalf("job %s: %d containers", name, len(pod.Containers))
		}
		c := pod.Containers[0]
		if pod.SecurityContext.RunAsUser != 10001 {
			t.Errorf("job %s runs as uid %d, the image's user is 10001", name, pod.SecurityContext.RunAsUser)
		}
		volumes := map[string]bool{}
		for _, v := range pod.Volumes {
			volumes[v.Name] = true
			if v.ConfigMap != nil && byKind["ConfigMap"][v.ConfigMap.Name].Kind == "" {
				t.Errorf("job %s: volume %s names ConfigMap %q, which is not defined", name, v.Name, v.ConfigMap.Name)
			}
			if v.PersistentVolumeClaim != nil && byKind["PersistentVolumeClaim"][v.PersistentVolumeClaim.ClaimName].Kind == "" {
				t.Errorf("job %s: volume %s names PVC %q, which is not defined", name, v.Name, v.PersistentVolumeClaim.ClaimName)
			}
		}
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				t.Errorf("job %s mounts volume %q, which the pod does not have", name, m.Name)
			}
		}
		mounted := func(p string) bool {
			for _, m := range c.VolumeMounts {
				if under(m.MountPath, p) {
					return true
				}
			}
			return false
		}
		checkGridArgs(t, c.Args, mounted)
		if c.Args[0] != "grid-shard" {
			continue
		}
		// the sharded Job: Indexed, GRID_SHARDS = completions
		if spec.CompletionMode != "Indexed" || spec.Completions == nil {
			t.Fatalf("job %s: completionMode %q, completions %v: want an Indexed Job", name, spec.CompletionMode, spec.Completions)
		}
		env := map[string]string{}
		for _, e := range c.Env {
			env[e.Name] = e.Value
		}
		if env["GRID_SHARDS"] != strconv.Itoa(*spec.Completions) {
			t.Errorf("job %s: GRID_SHARDS %q, completions %d", name, env["GRID_SHARDS"], *spec.Completions)
		}
		checkShards(t, *spec.Completions, env, "JOB_COMPLETION_INDEX", "kubernetes")
		// the config it reads is the ConfigMap's, and it is a valid grid
		for _, v := range pod.Volumes {
			if v.ConfigMap == nil {
				continue
			}
			for file, text := range byKind["ConfigMap"][v.ConfigMap.Name].Data {
				c, err := parseConfig([]byte(text))
				if err == nil {
					err = c.Validate()
				}
				if err != nil {
					t.Errorf("ConfigMap %s, %s: %v", v.ConfigMap.Name, file, err)
				}
			}
		}
	}
}

// The subset of AWS Batch's RegisterJobDefinition and SubmitJob requests
// that deploy/aws-batch uses.
type batchKV struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type batchResource struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

type batchJobDefinition struct {
	JobDefinitionName    string   `json:"jobDefinitionName"`
	Type                 string   `json:"type"`
	PlatformCapabilities []string `json:"platformCapabilities"`
	RetryStrategy        struct {
		Attempts int `json:"attempts"`
	} `json:"retryStrategy"`
	Timeout struct {
		AttemptDurationSeconds int `json:"attemptDurationSeconds"`
	} `json:"timeout"`
	ContainerProperties struct {
		Image                string          `json:"image"`
		Command              []string        `json:"command"`
		ResourceRequirements []batchResource `json:"resourceRequirements"`
		Environment          []batchKV       `json:"environment"`
		Volumes              []struct {
			Name                   string `json:"name"`
			EFSVolumeConfiguration struct {
				FileSystemID      string `json:"fileSystemId"`
				TransitEncryption string `json:"transitEncryption"`
			} `json:"efsVolumeConfiguration"`
		} `json:"volumes"`
		MountPoints []struct {
			SourceVolume  string `json:"sourceVolume"`
			ContainerPath string `json:"containerPath"`
			ReadOnly      bool   `json:"readOnly"`
		} `json:"mountPoints"`
		ReadonlyRootFilesystem bool `json:"readonlyRootFilesystem"`
	} `json:"containerProperties"`
}

type batchSubmit struct {
	JobName         string `json:"jobName"`
	JobQueue        string `json:"jobQueue"`
	JobDefinition   string `json:"jobDefinition"`
	ArrayProperties *struct {
		Size int `json:"size"`
	} `json:"arrayProperties"`
	DependsOn []struct {
		JobID string `json:"jobId"`
		Type  string `json:"type,omitempty"`
	} `json:"dependsOn"`
	ContainerOverrides struct {
		Command              []string        `json:"command"`
		Environment          []batchKV       `json:"environment"`
		ResourceRequirements []batchResource `json:"resourceRequirements"`
	} `json:"containerOverrides"`
}

func readStrictJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestAWSBatchManifests(t *testing.T) {
	dir := filepath.Join("..", "..", "deploy", "aws-batch")
	var def batchJobDefinition
	var grid, merge batchSubmit
	readStrictJSON(t, filepath.Join(dir, "job-definition.json"), &def)
	readStrictJSON(t, filepath.Join(dir, "submit-grid.json"), &grid)
	readStrictJSON(t, filepath.Join(dir, "submit-merge.json"), &merge)
	cp := def.ContainerProperties
	if def.Type != "container" || cp.Image == "" || len(cp.Command) == 0 {
		t.Fatalf("job definition: type %q image %q command %q", def.Type, cp.Image, cp.Command)
	}
	res := map[string]bool{}
	for _, r := range cp.ResourceRequirements {
		if _, err := strconv.Atoi(r.Value); err != nil {
			t.Errorf("resource %s = %q is not a number", r.Type, r.Value)
		}
		res[r.Type] = true
	}
	if !res["VCPU"] || !res["MEMORY"] {
		t.Errorf("resources %v: want VCPU and MEMORY", cp.ResourceRequirements)
	}
	volumes := map[string]bool{}
	for _, v := range cp.Volumes {
		volumes[v.Name] = true
	}
	mounted := func(p string) bool {
		for _, m := range cp.MountPoints {
			if volumes[m.SourceVolume] && !m.ReadOnly && under(m.ContainerPath, p) {
				return true
			}
		}
		return false
	}
	for _, s := range []batchSubmit{grid, merge} {
		if s.JobDefinition != def.JobDefinitionName || s.JobQueue == "" || s.JobName == "" {
			t.Errorf("submit %s: definition %q (want %q), queue %q", s.JobName, s.JobDefinition, def.JobDefinitionName, s.JobQueue)
		}
	}
	// the array job: the definition's command, GRID_SHARDS = the array size
	checkGridArgs(t, cp.Command, mounted)
	if cp.Command[0] != "grid-shard" || len(grid.ContainerOverrides.Command) != 0 {
		t.Fatalf("the array job runs %q, want grid-shard", cp.Command)
	}
	if grid.ArrayProperties == nil || grid.ArrayProperties.Size < 2 || grid.ArrayProperties.Size > 10000 {
		t.Fatalf("submit-grid: arrayProperties %+v: AWS Batch arrays have 2 to 10,000 children", grid.ArrayProperties)
	}
	env := map[string]string{}
	for _, kv := range append(cp.Environment, grid.ContainerOverrides.Environment...) {
		env[kv.Name] = kv.Value // overrides win
	}
	n := grid.ArrayProperties.Size
	if env["GRID_SHARDS"] != strconv.Itoa(n) {
		t.Errorf("GRID_SHARDS %q, array size %d", env["GRID_SHARDS"], n)
	}
	checkShards(t, n, env, "AWS_BATCH_JOB_ARRAY_INDEX", "aws-batch")
	// the merge: one job after the whole array, merging the same root
	if merge.ArrayProperties != nil || len(merge.DependsOn) != 1 || merge.DependsOn[0].Type != "" {
		t.Errorf("submit-merge: array %+v, dependsOn %+v: want one plain job that waits for the whole array", merge.ArrayProperties, merge.DependsOn)
	}
	checkGridArgs(t, merge.ContainerOverrides.Command, mounted)
	if c := merge.ContainerOverrides.Command; c[0] != "grid-merge" || c[1] != cp.Command[1] {
		t.Errorf("merge runs %q, want grid-merge of %s", c, cp.Command[1])
	}
}
