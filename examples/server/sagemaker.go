package main

import (
	"flag"
	"net"
	"os"
	"path/filepath"
)

// SageMaker's container contract: SageMaker runs the image with "serve" as
// its argument and sends GET /ping and POST /invocations to port 8080 (or
// SAGEMAKER_BIND_TO_PORT) on all interfaces; the model artifacts lie in
// /opt/ml/model. With "serve" first, the command follows it: the flags the
// command line does not set take those values.

const sageMakerModelDir = "/opt/ml/model"

// sageMakerArgs reports whether args start with "serve", and returns the
// rest.
func sageMakerArgs(args []string) (bool, []string) {
	if len(args) > 0 && args[0] == "serve" {
		return true, args[1:]
	}
	return false, args
}

// sageMakerDefaults sets -addr and -model as the contract wants, and keeps
// jobs in memory (an endpoint's container is stateless), unless the
// command line set them.
func sageMakerDefaults(fs *flag.FlagSet, addr, model, data *string) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !set["data"] {
		*data = "none"
	}
	if !set["addr"] {
		port := os.Getenv("SAGEMAKER_BIND_TO_PORT")
		if port == "" {
			port = "8080"
		}
		*addr = net.JoinHostPort("0.0.0.0", port)
	}
	if !set["model"] {
		dir := os.Getenv("SM_MODEL_DIR")
		if dir == "" {
			dir = sageMakerModelDir
		}
		if _, err := os.Stat(filepath.Join(dir, "model_index.json")); err == nil {
			*model = dir
		} // else the default model, as the image ships it
	}
}
