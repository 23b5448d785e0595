package remote_test

import "syscall"

// setXattr sets a user.* extended attribute; an error means the file
// system under the test's temp dir does not take them.
func setXattr(p, name, value string) error {
	return syscall.Setxattr(p, name, []byte(value), 0)
}

// getXattr reads one extended attribute.
func getXattr(p, name string) (string, error) {
	buf := make([]byte, 256)
	n, err := syscall.Getxattr(p, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}
