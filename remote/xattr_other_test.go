//go:build !linux

package remote_test

import "errors"

var errNoXattr = errors.New("extended attributes are only tested on Linux")

func setXattr(p, name, value string) error { return errNoXattr }

func getXattr(p, name string) (string, error) { return "", errNoXattr }
