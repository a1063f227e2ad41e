package sd

import (
	"context"
	"fmt"

	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/unet"
)

// WithStepCache turns on DeepCache-style step caching (Ma et al. 2023):
// the UNet is split at open, at skip connection branch of its up path
// (1 = the shallowest, whose shallow path is the cheapest; 0 means
// unet.DefaultStepCacheBranch, 2, the one measured within the quality bar),
// into a full model that also returns the deep features feeding that
// skip connection and a shallow model that reuses them. Each image then
// runs the full model once every interval steps and the shallow model on
// its cached features in between, so a call between full steps costs
// only the shallow path. Interval 1 runs the full model at every step
// (the same images as without step caching, within float tolerance);
// larger intervals are faster and change the images a little (quality
// figures in BENCHMARKS.md). The split is built once into the rewrite
// cache (see WithRewriteCache), with the graph rewrites, and proven
// exact on the UNet's example inputs before use. Only float32 UNets can
// be split; LoRAs applied per request (WithLoRADir) run without it. With
// WithInt8 the UNet is quantized first and the int8 graph split, so that
// the shallow steps run int8 too; the split is then proven exact against
// the int8 model (unet.Signature.OpenInt8StepCache).
func WithStepCache(interval, branch int) LoadOption {
	return func(c *loadConfig) { c.stepCache = &unet.StepCache{Interval: interval, Branch: branch} }
}

// checkStepCache reports an invalid WithStepCache.
func (c *loadConfig) checkStepCache() []error {
	if c.stepCache == nil {
		return nil
	}
	if err := c.stepCache.Check(); err != nil {
		return []error{fmt.Errorf("sd: WithStepCache: %w", err)}
	}
	return nil
}

// openUNet opens the UNet, split for step caching when WithStepCache
// asked for it.
func (c *loadConfig) openUNet(ctx context.Context, sig *unet.Signature, o session.Options) (*unet.Model, error) {
	if c.stepCache == nil {
		return sig.Open(ctx, o)
	}
	return sig.OpenStepCache(ctx, o, *c.stepCache)
}
