package scheduler

import (
	"fmt"
)

// PNDM is diffusers' PNDMScheduler (pseudo numerical methods: Runge-Kutta
// warm-up steps unless skip_prk_steps, then linear multistep "PLMS"). It is
// not safe for concurrent use.
type PNDM struct {
	alphaBase
	stepRatio int
	prk       []float64 // PRK timesteps (empty with skip_prk_steps)

	counter  int
	ets      [4][]float32 // last model outputs, oldest first
	nets     int
	curSamp  []float32
	hasCur   bool
	curModel []float32 // PRK accumulator
	tmp      []float32
}

func newPNDM(b *base) (Scheduler, error) {
	p, n, N := b.p, b.n, b.p.numTrainTimesteps
	var ts []float64 // ascending
	switch p.timestepSpacing {
	case "linspace":
		ts = npLinspace(0, float64(N-1), n)
		for i := range ts {
			ts[i] = npRound(ts[i])
		}
	case "leading":
		ratio := N / n
		ts = make([]float64, n)
		for i := range ts {
			ts[i] = float64(i*ratio + p.stepsOffset)
		}
	case "trailing":
		for _, x := range npArange(float64(N), 0, -float64(N)/float64(n)) {
			ts = append(ts, npRound(x)-1)
		}
		for i, j := 0, len(ts)-1; i < j; i, j = i+1, j-1 {
			ts[i], ts[j] = ts[j], ts[i]
		}
	default:
		return nil, &ConfigError{Field: "timestep_spacing", Reason: fmt.Sprintf("%q: unsupported value", p.timestepSpacing)}
	}
	if p.predictionType == "sample" {
		return nil, &ConfigError{Field: "prediction_type", Reason: "sample is not supported by PNDMScheduler"}
	}
	s := &PNDM{alphaBase: alphaBase{b}, stepRatio: N / n}
	var full []float64
	if p.skipPRKSteps {
		// concat(ts[:-1], ts[-2:-1], ts[-1:])[::-1]
		var plms []float64
		plms = append(plms, ts[:len(ts)-1]...)
		if len(ts) >= 2 {
			plms = append(plms, ts[len(ts)-2])
		}
		plms = append(plms, ts[len(ts)-1])
		for i := len(plms) - 1; i >= 0; i-- {
			full = append(full, plms[i])
		}
	} else {
		if n < 3 {
			return nil, fmt.Errorf("%w: PNDM with PRK steps needs at least 3 steps", ErrOptions)
		}
		const pndmOrder = 4
		half := float64(N / n / 2)
		// np.array(ts[-4:]).repeat(2) + tile([0, half], 4)
		last := ts[max(len(ts)-pndmOrder, 0):]
		var prk []float64
		for _, t := range last {
			prk = append(prk, t, t+half)
		}
		// prk[:-1].repeat(2)[1:-1][::-1]
		var rep []float64
		for _, t := range prk[:len(prk)-1] {
			rep = append(rep, t, t)
		}
		rep = rep[1 : len(rep)-1]
		for i := len(rep) - 1; i >= 0; i-- {
			s.prk = append(s.prk, rep[i])
		}
		full = append(full, s.prk...)
		for i := len(ts) - 4; i >= 0; i-- {
			full = append(full, ts[i])
		}
	}
	s.full = full
	for i := range s.ets {
		s.ets[i] = make([]float32, b.size)
	}
	s.curSamp = make([]float32, b.size)
	s.curModel = make([]float32, b.size)
	s.tmp = make([]float32, b.size)
	return s, nil
}

// Step implements Scheduler.
func (s *PNDM) Step(modelOutput, sample []float32, i int) error {
	if err := s.checkStep(modelOutput, sample, i); err != nil {
		return err
	}
	t := int(s.full[s.begin+i])
	if s.counter < len(s.prk) && !s.p.skipPRKSteps {
		s.stepPRK(modelOutput, sample, t)
	} else {
		s.stepPLMS(modelOutput, sample, t)
	}
	return nil
}

func (s *PNDM) pushEts(mo []float32) {
	if s.nets == len(s.ets) {
		first := s.ets[0]
		copy(s.ets[:], s.ets[1:])
		s.ets[len(s.ets)-1] = first
		s.nets--
	}
	copy(s.ets[s.nets], mo)
	s.nets++
}

func (s *PNDM) stepPRK(mo, sample []float32, t int) {
	diff := s.stepRatio / 2
	if s.counter%2 != 0 {
		diff = 0
	}
	prevT := t - diff
	t = int(s.prk[s.counter/4*4])
	sixth, third := float32(1.0/6), float32(1.0/3)
	cur := s.curModel
	out := mo
	switch s.counter % 4 {
	case 0:
		for j := range cur {
			cur[j] += float32(sixth * mo[j])
		}
		s.pushEts(mo)
		copy(s.curSamp, sample)
		s.hasCur = true
	case 1, 2:
		for j := range cur {
			cur[j] += float32(third * mo[j])
		}
	case 3:
		for j := range cur {
			s.tmp[j] = cur[j] + float32(sixth*mo[j])
			cur[j] = 0
		}
		out = s.tmp
	}
	src := sample
	if s.hasCur {
		src = s.curSamp
	}
	s.prevSample(sample, src, t, prevT, out)
	s.counter++
}

func (s *PNDM) stepPLMS(mo, sample []float32, t int) {
	prevT := t - s.stepRatio
	if s.counter != 1 {
		s.pushEts(mo) // ets = ets[-3:] + [model_output]
	} else {
		prevT = t
		t += s.stepRatio
	}
	e := s.ets[:s.nets]
	out := s.tmp
	src := sample
	switch {
	case s.nets == 1 && s.counter == 0:
		copy(out, mo)
		copy(s.curSamp, sample)
		s.hasCur = true
	case s.nets == 1 && s.counter == 1:
		e1 := e[0]
		for j := range out {
			out[j] = (mo[j] + e1[j]) / 2
		}
		// sample = cur_sample; the result is written to the caller's sample.
		src = s.curSamp
		s.hasCur = false
	case s.nets == 2:
		e1, e2 := e[1], e[0]
		for j := range out {
			out[j] = (float32(3*e1[j]) - e2[j]) / 2
		}
	case s.nets == 3:
		e1, e2, e3 := e[2], e[1], e[0]
		for j := range out {
			out[j] = (float32(float32(23*e1[j])-float32(16*e2[j])) + float32(5*e3[j])) / 12
		}
	default:
		e1, e2, e3, e4 := e[3], e[2], e[1], e[0]
		c := float32(1.0 / 24)
		for j := range out {
			v := float32(float32(55*e1[j]) - float32(59*e2[j]))
			v = float32(v + float32(37*e3[j]))
			v = float32(v - float32(9*e4[j]))
			out[j] = c * v
		}
	}
	s.prevSample(sample, src, t, prevT, out)
	s.counter++
}

// prevSample is PNDM's _get_prev_sample (formula (9) of the PNDM paper),
// writing to dst from src.
func (s *PNDM) prevSample(dst, src []float32, t, prevT int, mo []float32) {
	a, aPrev := s.ts.alphaProds(t, prevT)
	b := 1 - a
	bPrev := 1 - aPrev
	sc := sqrt32(aPrev / a)
	denom := float32(a*sqrt32(bPrev)) + sqrt32(float32(a*b)*aPrev)
	d := aPrev - a
	if s.p.predictionType == "v_prediction" {
		sa, sb := sqrt32(a), sqrt32(b)
		for j := range dst {
			m := float32(sa*mo[j]) + float32(sb*src[j])
			dst[j] = float32(sc*src[j]) - float32(float32(d*m)/denom)
		}
		return
	}
	for j := range dst {
		dst[j] = float32(sc*src[j]) - float32(float32(d*mo[j])/denom)
	}
}
