package scheduler

import (
	"math"
	"slices"
	"testing"
)

// TestSinglestepOrders checks get_order_list for every order, step count
// and lower_order_final, against the lists diffusers' formula gives.
func TestSinglestepOrders(t *testing.T) {
	for _, tc := range []struct {
		order, n int
		lof      bool
		want     []int
	}{
		{3, 6, false, []int{1, 2, 3, 1, 2, 3}},
		{3, 6, true, []int{1, 2, 3, 1, 2, 1}},
		{3, 7, true, []int{1, 2, 3, 1, 2, 3, 1}},
		{3, 8, true, []int{1, 2, 3, 1, 2, 3, 1, 2}},
		{3, 1, true, []int{1}},
		{3, 2, true, []int{1, 2}},
		{3, 3, true, []int{1, 2, 1}},
		{2, 4, true, []int{1, 2, 1, 1}},
		{2, 5, true, []int{1, 2, 1, 2, 1}},
		{2, 4, false, []int{1, 2, 1, 2}},
		{1, 3, true, []int{1, 1, 1}},
	} {
		if got := singlestepOrders(tc.order, tc.n, tc.lof); !slices.Equal(got, tc.want) {
			t.Errorf("order %d, %d steps, lower_order_final %v: %v, want %v", tc.order, tc.n, tc.lof, got, tc.want)
		}
	}
}

// TestSinglestepThirdOrderExact checks the third-order singlestep update
// (solver_order 3) on the data predictions its derivation integrates
// exactly: DPM-Solver++'s solution is x_t = (σ_t/σ_s)·x_s +
// σ_t ∫ e^λ x0(λ) dλ over λ from the block's start to its end, and the
// heun form's divided differences are exact for an x0(λ) quadratic in λ,
// the midpoint form's for a linear one. With prediction_type "sample" the
// model output is x0 itself; each three-evaluation block must land on
// the integral, computed here in float64, within float32 rounding.
func TestSinglestepThirdOrderExact(t *testing.T) {
	for _, tc := range []struct {
		solver string
		curve  float64 // the quadratic term
	}{{"heun", 0.4}, {"midpoint", 0}} {
		t.Run(tc.solver, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(`{"_class_name": "DPMSolverSinglestepScheduler", "beta_start": 0.00085, "beta_end": 0.012,
				"beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "solver_order": 3, "solver_type": "` + tc.solver + `",
				"prediction_type": "sample", "lower_order_final": false, "final_sigmas_type": "sigma_min"}`))
			if err != nil {
				t.Fatal(err)
			}
			const size = 8
			s, err := New("DPMSolverSinglestepScheduler", cfg, Options{Steps: 6, Size: size})
			if err != nil {
				t.Fatal(err)
			}
			sig := s.(interface{ Sigmas() []float32 }).Sigmas()
			lam := func(i int) float64 { return -math.Log(float64(sig[i])) } // log(α/σ_t) = −log σ
			f := func(j int, l float64) float64 {                            // x0 of element j at λ
				u := l - lam(0)
				return 0.3*float64(j) - 1 + (0.2-0.05*float64(j))*u + tc.curve*u*u
			}
			x := make([]float32, size)
			for j := range x {
				x[j] = float32(j)/4 - 1
			}
			start := slices.Clone(x)
			mo := make([]float32, size)
			for i := range s.Timesteps() {
				for j := range mo {
					mo[j] = float32(f(j, lam(i)))
				}
				if err := s.Step(mo, x, i); err != nil {
					t.Fatal(err)
				}
				if (i+1)%3 != 0 {
					continue
				}
				ls, lt := lam(i-2), lam(i+1)
				h := lt - ls
				sigT := float64(sig[i+1]) / math.Sqrt(float64(sig[i+1])*float64(sig[i+1])+1)
				sigS := float64(sig[i-2]) / math.Sqrt(float64(sig[i-2])*float64(sig[i-2])+1)
				for j := range x {
					// f around ls: a + b·u + c·u², u = λ − ls
					d := ls - lam(0)
					c := tc.curve
					b := (0.2 - 0.05*float64(j)) + 2*c*d
					a := f(j, ls)
					eh := math.Exp(h)
					integral := a*(eh-1) + b*(eh*(h-1)+1) + c*(eh*(h*h-2*h+2)-2)
					want := sigT/sigS*float64(start[j]) + sigT*math.Exp(ls)*integral
					if math.Abs(float64(x[j])-want) > 2e-4*math.Max(1, math.Abs(want)) {
						t.Errorf("block ending at evaluation %d, element %d: %v, the exact solution is %v", i, j, x[j], want)
					}
				}
				start = slices.Clone(x)
			}
		})
	}
	cfg, _ := ParseConfig([]byte(`{"_class_name": "DPMSolverSinglestepScheduler", "solver_order": 3, "algorithm_type": "sde-dpmsolver++"}`))
	if _, err := New("DPMSolverSinglestepScheduler", cfg, Options{Steps: 6, Size: 4}); err == nil {
		t.Error("solver_order 3 with sde-dpmsolver++ was accepted (diffusers has no such update)")
	}
}
