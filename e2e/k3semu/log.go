package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Logger writes logrus-style text lines (time="..." level=info msg="...")
// like k3s does on stderr, so journald shows familiar lines.
type Logger struct {
	mu sync.Mutex
	w  io.Writer
}

func newLogger(w io.Writer) *Logger { return &Logger{w: w} }

func (l *Logger) log(level, format string, args ...any) {
	if l == nil || l.w == nil {
		return
	}
	msg := fmt.Sprintf(format, args...)
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "time=%q level=%s msg=%s\n", time.Now().UTC().Format(time.RFC3339), level, strconv.Quote(msg))
}

func (l *Logger) Infof(format string, args ...any)  { l.log("info", format, args...) }
func (l *Logger) Warnf(format string, args ...any)  { l.log("warning", format, args...) }
func (l *Logger) Errorf(format string, args ...any) { l.log("error", format, args...) }
func (l *Logger) Fatalf(format string, args ...any) { l.log("fatal", format, args...) }

// logWriter adapts Logger for net/http's ErrorLog.
type logWriter struct{ l *Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.l.Infof("%s", strings.TrimSpace(string(p)))
	return len(p), nil
}
