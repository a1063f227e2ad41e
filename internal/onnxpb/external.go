package onnxpb

// External is one external data file a model reads, with the number of
// its bytes the model's initializers need.
type External struct {
	Location string // as the model writes it, relative to the model's folder
	Need     int64
}

// ExternalNeeds returns each external data file of m (in the order of
// ExternalFiles) with the length it must have.
func (m *IO) ExternalNeeds() []External {
	var out []External
	for _, loc := range m.ExternalFiles() {
		var need int64
		for _, t := range m.Initializers {
			if t.Location != loc {
				continue
			}
			n := t.Length
			if n < 0 {
				n = t.NumBytes()
			}
			need = max(need, t.Offset+n)
		}
		out = append(out, External{Location: loc, Need: need})
	}
	return out
}
