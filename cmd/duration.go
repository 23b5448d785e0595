package cmd

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

const defaultTimeout = 5 * time.Minute

// duration is a flag value taking Go durations plus whole or fractional
// days ("120d", "1.5d"), since certificate lifetimes are spoken of in days.
type duration time.Duration

// String shows whole days as days ("120d"), anything else as Go does.
func (d *duration) String() string {
	const day = 24 * time.Hour
	if v := time.Duration(*d); v > 0 && v%day == 0 {
		return fmt.Sprintf("%dd", v/day)
	}
	return time.Duration(*d).String()
}
func (d *duration) Type() string { return "duration" }

func (d *duration) Set(s string) error {
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

// parseDuration accepts Go duration syntax and a plain number of days with
// a "d" suffix.
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("invalid duration %q: want e.g. 120d, 36h or 90s", s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("invalid duration %q: want e.g. 120d, 36h or 90s", s)
	}
	return v, nil
}

func (d duration) value() time.Duration { return time.Duration(d) }
