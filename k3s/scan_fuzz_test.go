package k3s

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// The fuzz targets below hold the three scanners to one promise: whatever
// the input, they do not panic, every decoded byte they tie to the file is
// that byte of the file, and rewriteFile either refuses or changes exactly
// the 64 hash characters of each token pinning the old hash, and nothing
// else. "Each token" is judged by an independent reading of the output:
// the reference readers below for systemd's formats, yaml.v3 for config
// files. They also run as plain tests on their seed corpus.

// FuzzUnitScanner: systemd unit files and drop-ins.
func FuzzUnitScanner(f *testing.F) {
	for _, s := range []string{
		installUnit("--token", srvTok),
		installUnit("--token="+srvTok, "--agent-token", nodeTok),
		installUnit("-t", "K10"+oldHash+"::server:it's", "--node-label", "a=b"),
		strings.ReplaceAll(installUnit("--token", srvTok), "\n", "\r\n"),
		strings.ReplaceAll(installUnit("--token", srvTok), "\n", "\r"),
		"\xef\xbb\xbf[Service]\nExecStart=/usr/local/bin/k3s agent \\\n# old: --token K10" + oldHash + "::node:x \\\n\t--token " + nodeTok + "\n",
		"[Service]\nEnvironment=\"K3S_TOKEN=" + srvTok + "\" K3S_URL=https://10.0.0.1:6443\nExecStart=\nExecStart=/usr/local/bin/k3s agent\n",
		"[Service]\nExecStart=/usr/local/bin/k3s server \\\\\n\t--token " + srvTok + "\n",
		"[Service]\nExecStart=/usr/local/bin/k3s server\x00--token " + srvTok + "\n",
		"[Unit]\nDescription=k3s\n[Service]]\nExecStart=/usr/local/bin/k3s server --token " + srvTok + "\n",
		"[Service]\nExecStart=/usr/local/bin/k3s server --token " + srvTok + " --token-file=/etc/k3s/token\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		sets := scanUnit(in)
		var got [][2]string
		for _, s := range sets {
			if err := spanError(in, s.val); err != nil {
				t.Fatalf("%s: %v", s.key, err)
			}
			got = append(got, [2]string{s.key, s.val.String()})
		}
		if want := refUnitSettings(in); !reflect.DeepEqual(got, want) && (len(got) > 0 || len(want) > 0) {
			t.Fatalf("scanUnit read\n%q\nsystemd reads\n%q", got, want)
		}
		checkOldHashRewrite(t, fileUnit, in, refUnitTokens)
	})
}

// FuzzEnvScanner: EnvironmentFile= files (install.sh's .env, /etc/default).
func FuzzEnvScanner(f *testing.F) {
	for _, s := range []string{
		"K3S_TOKEN='" + srvTok + "'\nK3S_URL='https://10.0.0.1:6443'\n",
		"K3S_TOKEN=\"K10" + oldHash + "::server:q\\\"d\\\\b\\$x\"\r\nK3S_AGENT_TOKEN=" + nodeTok + "\r\n",
		"# /etc/default/k3s\nK3S_TOKEN=" + srvTok + "\nK3S_TOKEN_FILE=/etc/k3s/token\n",
		"export K3S_TOKEN='" + srvTok + "'\n",
		"K3S_TOKEN='K10" + oldHash + "::server:it'\\''s'\n",
		"# note \\\nK3S_TOKEN=" + srvTok + "\n",
		"#x\rK3S_TOKEN=" + srvTok + "\r",
		"A='multi\n# K3S_TOKEN=K10" + oldHash + "::server:x\n'\nK3S_TOKEN=" + srvTok,
		"K3S_TOKEN=" + srvTok + "\x00K3S_TOKEN=" + nodeTok + "\n",
		"K3S_TOKEN=" + srvTok + "\nOTHER=\xff\n",
		"K3S_TOKEN=K10" + oldHash + "::server:a\\\nb\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		entries, _ := scanEnv(in)
		var got [][2]string
		for _, e := range entries {
			if err := spanError(in, e.val); err != nil {
				t.Fatalf("%s: %v", e.key, err)
			}
			got = append(got, [2]string{e.key, e.val.String()})
		}
		if want := refEnvPairs(in); !reflect.DeepEqual(got, want) && (len(got) > 0 || len(want) > 0) {
			t.Fatalf("scanEnv read\n%q\nsystemd reads\n%q", got, want)
		}
		parseEnvFile("/e", kindEnvFile, in, "")
		checkOldHashRewrite(t, fileEnv, in, func(out []byte) []string {
			var toks []string
			for _, p := range refEnvPairs(out) {
				name := strings.TrimLeft(strings.TrimPrefix(p[0], "export"), " \t")
				if _, ok := envSettings[name]; ok {
					toks = append(toks, p[1])
				}
			}
			return toks
		})
	})
}

// FuzzConfigScanner: k3s config.yaml and config.yaml.d drop-ins.
func FuzzConfigScanner(f *testing.F) {
	for _, s := range []string{
		"# /etc/rancher/k3s/config.yaml\nwrite-kubeconfig-mode: \"0644\"\ntoken: " + srvTok + "\ntls-san:\n  - k3s.example.com\nnode-label:\n  - \"role=server\"\n",
		"server: https://10.0.0.1:6443\ntoken: \"" + nodeTok + "\" # join\n",
		"---\nagent-token: '" + strings.ReplaceAll(nodeTok, "agentpw", "it''s") + "'\ntoken-file: /etc/k3s/token\n...\n",
		"token: " + shortTok + "\ntoken: " + srvTok + "\r\n",
		"token+: " + bootTok + "\n---\n# empty\n",
		"%YAML 1.1\n---\ntoken: " + srvTok + "\n",
		"a: 1\n---\ntoken: " + srvTok + "\n",
		"token: |\n  " + srvTok + "\n",
		"token: K10" + oldHash + "::server:\n  continued\n",
		"# c\rt: " + srvTok + "\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		parseConfig("/c", kindConfigDropIn, in)
		checkOldHashRewrite(t, fileConfig, in, func(out []byte) []string {
			var doc yaml.Node
			if yaml.Unmarshal(out, &doc) != nil || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
				return nil
			}
			var toks []string
			top := doc.Content[0].Content
			for i := 0; i+1 < len(top); i += 2 {
				if name := strings.TrimSuffix(top[i].Value, "+"); name == "token" || name == "t" || name == "agent-token" {
					toks = append(toks, top[i+1].Value)
				}
			}
			return toks
		})
	})
}

// checkOldHashRewrite rewrites the tokens pinning oldHash to newHash.
// Either rewriteFile refuses, or: the output differs from the input only
// in whole 64-byte runs that held oldHash right after "K10" and before
// "::" and now hold newHash, one per rewritten definition; none of the
// tokens the reference reader (tokens) finds in the output still pins
// oldHash, i.e. starts with K10<oldHash>:: (k3s reads a token without the
// K10 prefix as a short token, which pins nothing); and rewriting again
// changes nothing.
func checkOldHashRewrite(t *testing.T, kind FileKind, in []byte, tokens func([]byte) []string) {
	t.Helper()
	orig := bytes.Clone(in)
	opts := RewriteOptions{NewHash: newHash, OldHashes: []string{oldHash}}
	r, err := rewriteFile(kind, "/f", in, opts)
	if !bytes.Equal(in, orig) {
		t.Fatal("input modified")
	}
	if err != nil {
		return
	}
	out := r.New
	if len(out) != len(in) {
		t.Fatal("length changed")
	}
	allowed := make([]bool, len(in))
	for _, s := range r.Rewritten {
		h := s.hashOff
		if h < 3 || h+66 > len(in) || string(in[h-3:h]) != "K10" || string(in[h:h+64]) != oldHash ||
			string(in[h+64:h+66]) != "::" || string(out[h:h+64]) != newHash {
			t.Fatalf("definition at %d is not an old hash replaced by the new one", h)
		}
		for i := h; i < h+64; i++ {
			allowed[i] = true
		}
	}
	for i := range in {
		if in[i] != out[i] && !allowed[i] {
			t.Fatalf("byte %d changed outside a rewritten hash", i)
		}
	}
	for _, v := range tokens(out) {
		if strings.HasPrefix(v, "K10"+oldHash+"::") {
			t.Fatalf("a token the program reads still pins the old hash")
		}
	}
	again, err := rewriteFile(kind, "/f", out, opts)
	if err != nil || again.Changed() {
		t.Fatalf("second rewrite: changed=%v err=%v", again.Changed(), err)
	}
}

// refUnitSettings is how systemd reads the [Service] settings of a unit
// file, restated independently of scanUnit for the fuzz tests: lines as
// read_line splits them, then config_parse's comment, continuation and
// parse_line steps on whole strings.
func refUnitSettings(b []byte) [][2]string {
	var (
		out      [][2]string
		section  string
		cont     []byte
		haveCont bool
		bomDone  bool
	)
	for _, buf := range refReadLines(b) {
		if l := strings.TrimLeft(buf, " \t\r\n"); l != "" && (l[0] == '#' || l[0] == ';') {
			continue
		}
		l := buf
		if !bomDone && strings.HasPrefix(buf, "\xef\xbb\xbf") {
			l, bomDone = buf[3:], true
		}
		// config_parse scans the whole joined text for escapes; what came
		// before l ends in the space that replaced an unescaped backslash,
		// so the state at the start of l is always "not escaped".
		escaped := false
		for i := 0; i < len(l); i++ {
			if escaped {
				escaped = false
			} else if l[i] == '\\' {
				escaped = true
			}
		}
		cont = append(cont, l...)
		if escaped {
			cont[len(cont)-1] = ' '
			haveCont = true
			continue
		}
		p := string(cont)
		cont, haveCont = cont[:0], false
		if !refParseLine(p, &section, &out) {
			return out
		}
	}
	if haveCont {
		refParseLine(string(cont), &section, &out)
	}
	return out
}

// refUnitTokens lists the token values a unit passes to k3s: the values of
// --token/-t/--agent-token (one or two dashes, "=value" or the next word)
// on ExecStart= lines, up to a "--", and K3S_TOKEN/K3S_AGENT_TOKEN words of
// Environment= lines. Words are split at blanks with quotes removed and a
// backslash taking the next character as is (C escapes are not decoded: a
// token written with them is refused anyway).
func refUnitTokens(b []byte) []string {
	var toks []string
	for _, set := range refUnitSettings(b) {
		words := refWords(set[1])
		switch set[0] {
		case "Environment":
			for _, w := range words {
				if name, v, ok := strings.Cut(w, "="); ok && (name == "K3S_TOKEN" || name == "K3S_AGENT_TOKEN") {
					toks = append(toks, v)
				}
			}
		case "ExecStart":
			for i := 1; i < len(words) && words[i] != "--"; i++ {
				name, v, eq := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(words[i], "-"), "-"), "=")
				if !strings.HasPrefix(words[i], "-") || (name != "token" && name != "t" && name != "agent-token") {
					continue
				}
				if !eq && i+1 < len(words) {
					i++
					v = words[i]
				}
				toks = append(toks, v)
			}
		}
	}
	return toks
}

func refWords(s string) []string {
	var (
		words []string
		cur   []byte
		in    bool
		quote byte
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote == 0 && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			if in {
				words = append(words, string(cur))
				cur, in = nil, false
			}
			continue
		case c == '\\' && i+1 < len(s):
			i++
			cur = append(cur, s[i])
		case quote != 0 && c == quote:
			quote = 0
		case quote == 0 && (c == '"' || c == '\''):
			quote = c
		default:
			cur = append(cur, c)
		}
		in = true
	}
	if in {
		words = append(words, string(cur))
	}
	return words
}

// refReadLines splits as read_line: a line ends at the first LF, CR or
// NUL; the line end goes on while each next character is another end
// character not yet in it, and stops after a NUL.
func refReadLines(b []byte) []string {
	var lines []string
	for len(b) > 0 {
		var line []byte
		seen := map[byte]bool{}
		i := 0
		for ; i < len(b); i++ {
			c := b[i]
			isEnd := c == '\n' || c == '\r' || c == 0
			if seen[0] || (!isEnd && len(seen) > 0) || (isEnd && seen[c]) {
				break
			}
			if isEnd {
				seen[c] = true
				continue
			}
			line = append(line, c)
		}
		lines = append(lines, string(line))
		b = b[i:]
	}
	return lines
}

// refParseLine is parse_line for one logical line; false where systemd
// stops reading the file.
func refParseLine(l string, section *string, out *[][2]string) bool {
	l = strings.Trim(l, " \t\r\n")
	if l == "" {
		return true
	}
	if !utf8.ValidString(l) {
		return false
	}
	for _, r := range l {
		if r >= 0xFDD0 && r <= 0xFDEF || r&0xFFFE == 0xFFFE {
			return false
		}
	}
	if l[0] == '[' {
		if l[len(l)-1] != ']' || len(l) < 2 {
			return false
		}
		name := l[1 : len(l)-1]
		if strings.ContainsAny(name, "\"'\\\x7f") || strings.IndexFunc(name, func(r rune) bool { return r < ' ' }) >= 0 {
			return false
		}
		*section = name
		return true
	}
	key, val, ok := strings.Cut(l, "=")
	if *section != "Service" || !ok || key == "" {
		return true
	}
	*out = append(*out, [2]string{strings.Trim(key, " \t\r\n"), strings.Trim(val, " \t\r\n")})
	return true
}

// refEnvPairs is how systemd reads an environment file (the key/value
// pairs it pushes, before it checks names or UTF-8), restated for the
// fuzz tests: the text up to the first NUL, read character by character.
func refEnvPairs(b []byte) [][2]string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	const (
		preKey = iota
		key
		preValue
		value
		valueEsc
		sq
		dq
		dqEsc
		comment
		commentEsc
	)
	var (
		out          [][2]string
		k, v         []byte
		keyWS, valWS = -1, -1
		state        = preKey
		nl           = func(c byte) bool { return c == '\n' || c == '\r' }
		ws           = func(c byte) bool { return c == ' ' || c == '\t' || nl(c) }
		emit         = func(chomp bool) {
			if keyWS >= 0 {
				k = k[:keyWS]
			}
			if chomp && valWS >= 0 {
				v = v[:valWS]
			}
			out = append(out, [2]string{string(k), string(v)})
			k, v = nil, nil
		}
	)
	for _, c := range b {
		switch state {
		case preKey:
			switch {
			case c == '#' || c == ';':
				state = comment
			case !ws(c):
				state, k, keyWS = key, []byte{c}, -1
			}
		case key:
			switch {
			case nl(c):
				state, k = preKey, nil
			case c == '=':
				state, valWS = preValue, -1
			default:
				if !ws(c) {
					keyWS = -1
				} else if keyWS < 0 {
					keyWS = len(k)
				}
				k = append(k, c)
			}
		case preValue:
			switch {
			case nl(c):
				state = preKey
				emit(false)
			case c == '\'':
				state = sq
			case c == '"':
				state = dq
			case c == '\\':
				state = valueEsc
			case !ws(c):
				state, v = value, append(v, c)
			}
		case value:
			switch {
			case nl(c):
				state = preKey
				emit(true)
			case c == '\\':
				state, valWS = valueEsc, -1
			default:
				if !ws(c) {
					valWS = -1
				} else if valWS < 0 {
					valWS = len(v)
				}
				v = append(v, c)
			}
		case valueEsc:
			state = value
			if !nl(c) {
				v = append(v, c)
			}
		case sq:
			if c == '\'' {
				state = preValue
			} else {
				v = append(v, c)
			}
		case dq:
			switch c {
			case '"':
				state = preValue
			case '\\':
				state = dqEsc
			default:
				v = append(v, c)
			}
		case dqEsc:
			state = dq
			switch {
			case strings.IndexByte("\"\\`$", c) >= 0:
				v = append(v, c)
			case c != '\n':
				v = append(v, '\\', c)
			}
		case comment:
			if c == '\\' {
				state = commentEsc
			} else if nl(c) {
				state = preKey
			}
		case commentEsc:
			if nl(c) {
				state = preKey
			} else {
				state = comment
			}
		}
	}
	switch state {
	case preValue, valueEsc, sq, dq, dqEsc:
		emit(false)
	case value:
		emit(true)
	}
	return out
}
