package main

import (
	"fmt"
	"strings"
	"testing"
)

func TestResolveShard(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flag  string
		count int
		env   map[string]string
		want  string // "i/n source", or "error: substring"
	}{
		{"none", "", 0, nil, "0/1 "},
		{"flag", "1/3", 0, nil, "1/3 flag"},
		{"flag wins", "0/2", 0, map[string]string{"JOB_COMPLETION_INDEX": "1", "GRID_SHARDS": "2"}, "0/2 flag"},
		{"flag syntax", "1-3", 0, nil, "error: want i/n"},
		{"flag range", "3/3", 0, nil, "error: want 0 <= index < count"},
		{"flag zero", "0/0", 0, nil, "error: want 0 <= index < count"},
		{"kubernetes count flag", "", 4, map[string]string{"JOB_COMPLETION_INDEX": "3"}, "3/4 kubernetes"},
		{"kubernetes count env", "", 0, map[string]string{"JOB_COMPLETION_INDEX": "2", "GRID_SHARDS": "5"}, "2/5 kubernetes"},
		{"kubernetes no count", "", 0, map[string]string{"JOB_COMPLETION_INDEX": "2"}, "error: not the shard count"},
		{"kubernetes out of range", "", 2, map[string]string{"JOB_COMPLETION_INDEX": "2"}, "error: want 0 <= index"},
		{"aws size", "", 0, map[string]string{"AWS_BATCH_JOB_ARRAY_INDEX": "7", "AWS_BATCH_JOB_ARRAY_SIZE": "10"}, "7/10 aws-batch"},
		{"aws count flag", "", 8, map[string]string{"AWS_BATCH_JOB_ARRAY_INDEX": "7"}, "7/8 aws-batch"},
		{"aws no size", "", 0, map[string]string{"AWS_BATCH_JOB_ARRAY_INDEX": "1"}, "error: array size"},
		{"slurm min max", "", 0, map[string]string{"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "8"}, "4/8 slurm"},
		{"slurm step", "", 0, map[string]string{"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "6", "SLURM_ARRAY_TASK_STEP": "2"}, "2/4 slurm"},
		{"slurm off step", "", 0, map[string]string{"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "6", "SLURM_ARRAY_TASK_STEP": "2"}, "error: not in 0-6:2"},
		{"slurm count", "", 0, map[string]string{"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}, "2/3 slurm"},
		{"slurm alone", "", 0, map[string]string{"SLURM_ARRAY_TASK_ID": "2"}, "error: neither"},
		{"slurm garbage", "", 0, map[string]string{"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "3"}, "error: not a number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ResolveShard(tc.flag, tc.count, func(k string) string { return tc.env[k] })
			if want, ok := strings.CutPrefix(tc.want, "error: "); ok {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("ResolveShard = %+v, %v; want an error containing %q", s, err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprintf("%d/%d %s", s.Index, s.Count, s.Source); got != tc.want {
				t.Errorf("ResolveShard = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestShardsPartition checks that the shards of a grid cover every item
// exactly once.
func TestShardsPartition(t *testing.T) {
	for n := 1; n <= 7; n++ {
		seen := make([]int, 23)
		for i := range n {
			s := Shard{Index: i, Count: n}
			for it := range seen {
				if s.Has(it) {
					seen[it]++
				}
			}
		}
		for it, k := range seen {
			if k != 1 {
				t.Errorf("%d shards: item %d in %d shards", n, it, k)
			}
		}
	}
}
