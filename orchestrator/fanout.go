package orchestrator

import (
	"context"
	"errors"

	"golang.org/x/sync/errgroup"
)

// fanOut calls fn for every item, at most limit at once (no limit when
// limit < 1), and waits for all of them. It is the one way fleetcert works
// on many nodes or clusters at once.
//
// One error policy: an error never cancels the other items (a node half
// way through its restart must still get to its gates) and the errors
// come back joined, in item order. Cancellation of ctx is each fn's to
// honour, between its own steps.
func fanOut[T any](ctx context.Context, limit int, items []T, fn func(ctx context.Context, item T) error) error {
	var g errgroup.Group
	if limit > 0 {
		g.SetLimit(limit)
	}
	errs := make([]error, len(items))
	for i, item := range items {
		g.Go(func() error {
			errs[i] = fn(ctx, item)
			return nil
		})
	}
	_ = g.Wait()
	return errors.Join(errs...)
}
