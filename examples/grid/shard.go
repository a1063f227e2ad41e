package main

import (
	"fmt"
	"strconv"
	"strings"
)

// Shard is a deterministic slice of the grid: item i belongs to shard
// i mod Count. Round robin spreads every style over every shard, so the
// shards take about equally long.
type Shard struct {
	Index, Count int
	Source       string // where it came from: "flag", "kubernetes", "aws-batch", "slurm" or "" (no sharding)
}

// Has reports whether the item at index i belongs to the shard.
func (s Shard) Has(i int) bool { return s.Count <= 1 || i%s.Count == s.Index }

func (s Shard) String() string {
	if s.Count <= 1 {
		return ""
	}
	return fmt.Sprintf("%d/%d", s.Index, s.Count)
}

// ParseShard parses "i/n" with 0 <= i < n.
func ParseShard(s string) (Shard, error) {
	a, b, ok := strings.Cut(s, "/")
	if !ok {
		return Shard{}, fmt.Errorf("grid: shard %q: want i/n", s)
	}
	return newShard(a, b, "flag")
}

func newShard(index, count, source string) (Shard, error) {
	i, err1 := strconv.Atoi(strings.TrimSpace(index))
	n, err2 := strconv.Atoi(strings.TrimSpace(count))
	if err1 != nil || err2 != nil || n < 1 || i < 0 || i >= n {
		return Shard{}, fmt.Errorf("grid: shard %s/%s from %s: want 0 <= index < count", index, count, source)
	}
	return Shard{Index: i, Count: n, Source: source}, nil
}

// ResolveShard picks the shard from, in order: the -shard flag ("i/n"),
// Kubernetes Indexed Jobs (JOB_COMPLETION_INDEX; the count from -shards or
// GRID_SHARDS, since Kubernetes does not export the completions), AWS Batch
// array jobs (AWS_BATCH_JOB_ARRAY_INDEX; AWS_BATCH_JOB_ARRAY_SIZE if set,
// else -shards or GRID_SHARDS), and Slurm job arrays (SLURM_ARRAY_TASK_ID
// with SLURM_ARRAY_TASK_MIN, _MAX and _STEP, or SLURM_ARRAY_TASK_COUNT
// from a zero-based array). With none of them it returns the whole grid.
func ResolveShard(flag string, count int, getenv func(string) string) (Shard, error) {
	if flag != "" {
		return ParseShard(flag)
	}
	total := ""
	if count > 0 {
		total = strconv.Itoa(count)
	} else {
		total = getenv("GRID_SHARDS")
	}
	if idx := getenv("JOB_COMPLETION_INDEX"); idx != "" {
		if total == "" {
			return Shard{}, fmt.Errorf("grid: JOB_COMPLETION_INDEX=%s is set but not the shard count (-shards or GRID_SHARDS, the Job's completions)", idx)
		}
		return newShard(idx, total, "kubernetes")
	}
	if idx := getenv("AWS_BATCH_JOB_ARRAY_INDEX"); idx != "" {
		if n := getenv("AWS_BATCH_JOB_ARRAY_SIZE"); n != "" {
			total = n
		}
		if total == "" {
			return Shard{}, fmt.Errorf("grid: AWS_BATCH_JOB_ARRAY_INDEX=%s is set but not the array size (AWS_BATCH_JOB_ARRAY_SIZE, -shards or GRID_SHARDS)", idx)
		}
		return newShard(idx, total, "aws-batch")
	}
	if id := getenv("SLURM_ARRAY_TASK_ID"); id != "" {
		return slurmShard(id, getenv)
	}
	return Shard{Index: 0, Count: 1}, nil
}

// slurmShard maps a Slurm array task to a shard. --array=MIN-MAX[:STEP]
// gives tasks MIN, MIN+STEP, … MAX; task k of them is shard k.
func slurmShard(id string, getenv func(string) string) (Shard, error) {
	atoi := func(name, def string) (int, error) {
		v := getenv(name)
		if v == "" {
			v = def
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, fmt.Errorf("grid: %s=%q is not a number", name, v)
		}
		return n, nil
	}
	task, err := atoi("SLURM_ARRAY_TASK_ID", id)
	if err != nil {
		return Shard{}, err
	}
	if getenv("SLURM_ARRAY_TASK_MIN") != "" && getenv("SLURM_ARRAY_TASK_MAX") != "" {
		lo, err1 := atoi("SLURM_ARRAY_TASK_MIN", "")
		hi, err2 := atoi("SLURM_ARRAY_TASK_MAX", "")
		step, err3 := atoi("SLURM_ARRAY_TASK_STEP", "1")
		if err := firstErr(err1, err2, err3); err != nil {
			return Shard{}, err
		}
		if step < 1 || hi < lo || (task-lo)%step != 0 {
			return Shard{}, fmt.Errorf("grid: slurm task %d is not in %d-%d:%d", task, lo, hi, step)
		}
		return newShard(strconv.Itoa((task-lo)/step), strconv.Itoa((hi-lo)/step+1), "slurm")
	}
	if n := getenv("SLURM_ARRAY_TASK_COUNT"); n != "" {
		return newShard(strconv.Itoa(task), n, "slurm")
	}
	return Shard{}, fmt.Errorf("grid: SLURM_ARRAY_TASK_ID=%d is set but neither SLURM_ARRAY_TASK_MIN/MAX nor SLURM_ARRAY_TASK_COUNT", task)
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
