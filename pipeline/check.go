package pipeline

// Check returns the *RequestError that Submit would return for r, without
// queueing anything.
func (p *Pipeline) Check(r Request) error {
	_, err := p.resolve(r)
	return err
}
