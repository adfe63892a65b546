// Command schema-registry serves the Confluent Schema Registry REST API from memory for the integration
// tests. The registry itself is franz-go's srfake; this program puts it on a chosen address and adds the
// three things the tests need from a real registry that srfake does not do:
//
//   - HTTP basic auth answered as Confluent's registry answers it: 401 and
//     {"error_code":401,"message":"Unauthorized"} for a missing or wrong password. srfake's own WithAuth
//     option compares the whole Authorization header and answers a wrong one with 403 and error code 50002.
//   - Compatibility enforced when an Avro schema is registered (BACKWARD, FORWARD, FULL and their
//     _TRANSITIVE forms): srfake registers every schema whatever the subject's level, and a client that
//     must cope with 409 could not be tested against it. Protobuf and JSON Schema are registered unchecked.
//   - Protobuf schemas in the "serialized" format (?format=serialized: a base64 FileDescriptorProto), which
//     confluent-kafka's ProtobufDeserializer asks for; srfake returns the .proto text whatever the format.
//
// Usage: schema-registry [-listen 127.0.0.1:8081] [-user U -password P] [-cert F -key F [-client-ca F]]
// With -cert and -key it serves HTTPS; with -client-ca too, it requires a client certificate from that CA.
// It prints "listening on ADDR" once the socket is bound, then "request METHOD URI STATUS" for every
// request answered, so a test can tell what a client asked and how often. All state is lost when it exits.
package main

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"

	"github.com/bufbuild/protocompile"
	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8081", "address to listen on")
	user := flag.String("user", "", "require HTTP basic auth with this user (and -password)")
	password := flag.String("password", "", "the basic auth password")
	certFile := flag.String("cert", "", "serve HTTPS with this PEM certificate (and -key)")
	keyFile := flag.String("key", "", "the PEM key of -cert")
	clientCA := flag.String("client-ca", "", "with -cert: require a client certificate issued by this PEM CA")
	flag.Parse()
	if *password != "" && *user == "" {
		fmt.Fprintln(os.Stderr, "schema-registry: -password needs -user")
		os.Exit(2)
	}

	reg := srfake.NewRegistry()
	inner := reg.Handler()

	// Registration goes through the compatibility check first; everything else straight to srfake.
	mux := http.NewServeMux()
	mux.Handle("/", inner)
	mux.HandleFunc("POST /subjects/{subject}/versions", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			writeError(w, http.StatusRequestEntityTooLarge, 413, err.Error())
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		var sch sr.Schema
		if json.Unmarshal(body, &sch) == nil && sch.Type == sr.TypeAvro {
			subject := r.PathValue("subject")
			if status, code, msg := checkAvro(reg, inner, subject, sch); status != 0 {
				writeError(w, status, code, msg)
				return
			}
		}
		inner.ServeHTTP(w, r)
	})

	handler := logRequests(basicAuth(serializedProtobuf(mux, reg), *user, *password))

	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "schema-registry: %v\n", err)
		os.Exit(1)
	}
	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "schema-registry: %v\n", err)
			os.Exit(1)
		}
		config := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if *clientCA != "" {
			pem, err := os.ReadFile(*clientCA)
			if err != nil {
				fmt.Fprintf(os.Stderr, "schema-registry: %v\n", err)
				os.Exit(1)
			}
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(pem)
			config.ClientCAs = pool
			config.ClientAuth = tls.RequireAndVerifyClientCert
		}
		l = tls.NewListener(l, config)
	}
	// The harness waits for this line (stdout is unbuffered).
	fmt.Printf("listening on %s\n", l.Addr())
	if err := http.Serve(l, handler); err != nil {
		fmt.Fprintf(os.Stderr, "schema-registry: %v\n", err)
		os.Exit(1)
	}
}

func writeError(w http.ResponseWriter, status, code int, msg string) {
	w.Header().Set("Content-Type", "application/vnd.schemaregistry.v1+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error_code": code, "message": msg})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		// One write per line, so lines from concurrent requests do not interleave.
		fmt.Printf("request %s %s %d\n", r.Method, r.URL.RequestURI(), sw.status)
	})
}

// basicAuth refuses any request without the configured credentials, as Confluent's registry does.
func basicAuth(next http.Handler, user, password string) http.Handler {
	if user == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 ||
			subtle.ConstantTimeCompare([]byte(p), []byte(password)) != 1 {
			// Read what the client sent first: closing a connection with unread data resets it, and the
			// client may lose the 401 with it.
			_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
			w.Header().Set("WWW-Authenticate", `Basic realm="SchemaRegistry"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error_code":401,"message":"Unauthorized"}`)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// call runs one request against srfake's own handler, for the facts a check needs.
func call(h http.Handler, method, path string, body []byte) (int, []byte) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, bytes.NewReader(body)))
	return rec.Code, rec.Body.Bytes()
}

// checkAvro decides whether `sch` may be registered under `subject`: an error status, code and message,
// or status 0 to let srfake register it. A schema already under the subject is always accepted (the
// registry answers with its id), as Confluent's registry does.
func checkAvro(reg *srfake.Registry, inner http.Handler, subject string, sch sr.Schema) (int, int, string) {
	next, err := parseAvro(reg, sch)
	if err != nil {
		return http.StatusUnprocessableEntity, 42201, fmt.Sprintf("Invalid schema %s: %v", sch.Schema, err)
	}
	escaped := "/" + url.PathEscape(subject)
	body, _ := json.Marshal(sch)
	if status, _ := call(inner, http.MethodPost, "/subjects"+escaped, body); status == http.StatusOK {
		return 0, 0, ""
	}
	var config struct {
		Level string `json:"compatibilityLevel"`
	}
	if _, out := call(inner, http.MethodGet, "/config"+escaped, nil); json.Unmarshal(out, &config) != nil {
		return 0, 0, ""
	}
	level := config.Level
	if level == "" || level == "NONE" {
		return 0, 0, ""
	}
	var versions []int
	if status, out := call(inner, http.MethodGet, "/subjects"+escaped+"/versions", nil); status != http.StatusOK ||
		json.Unmarshal(out, &versions) != nil || len(versions) == 0 {
		return 0, 0, ""
	}
	if !strings.HasSuffix(level, "_TRANSITIVE") {
		versions = versions[len(versions)-1:]
	}
	for _, v := range versions {
		old, ok := reg.GetSchema(subject, v)
		if !ok || old.Type != sr.TypeAvro {
			continue
		}
		prev, err := parseAvro(reg, old.Schema)
		if err != nil {
			continue
		}
		// Backward: the new schema reads what the old one wrote; forward: the other way round.
		compat := avro.NewSchemaCompatibility()
		if strings.HasPrefix(level, "BACKWARD") || strings.HasPrefix(level, "FULL") {
			err = compat.Compatible(next, prev)
		}
		if err == nil && (strings.HasPrefix(level, "FORWARD") || strings.HasPrefix(level, "FULL")) {
			err = compat.Compatible(prev, next)
		}
		if err != nil {
			return http.StatusConflict, 409, fmt.Sprintf(
				"Schema being registered is incompatible with an earlier schema for subject %q, details: "+
					"[{version: %d, level: %s, error: %v}]", subject, v, level, err)
		}
	}
	return 0, 0, ""
}

// parseAvro parses an Avro schema with the named types of its references, each in its own cache so that
// no check sees the types of another.
func parseAvro(reg *srfake.Registry, sch sr.Schema) (avro.Schema, error) {
	cache := &avro.SchemaCache{}
	if err := addAvroRefs(reg, sch.References, cache, 0); err != nil {
		return nil, err
	}
	return avro.ParseWithCache(sch.Schema, "", cache)
}

func addAvroRefs(reg *srfake.Registry, refs []sr.SchemaReference, cache *avro.SchemaCache, depth int) error {
	if depth > 32 {
		return fmt.Errorf("references nested too deep")
	}
	for _, ref := range refs {
		s, ok := reg.GetSchema(ref.Subject, ref.Version)
		if !ok {
			return fmt.Errorf("reference %q: subject %q version %d not found", ref.Name, ref.Subject, ref.Version)
		}
		if err := addAvroRefs(reg, s.References, cache, depth+1); err != nil {
			return err
		}
		if _, err := avro.ParseWithCache(s.Schema.Schema, "", cache); err != nil {
			return fmt.Errorf("reference %q: %v", ref.Name, err)
		}
	}
	return nil
}

// serializedProtobuf answers ?format=serialized for protobuf schemas with the base64 FileDescriptorProto
// of the .proto text, as Confluent's registry does; other answers pass through unchanged.
func serializedProtobuf(next http.Handler, reg *srfake.Registry) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Query().Get("format") != "serialized" {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		out := rec.Body.Bytes()
		var fields map[string]json.RawMessage
		var sch sr.Schema
		if rec.Code == http.StatusOK && json.Unmarshal(out, &fields) == nil && json.Unmarshal(out, &sch) == nil &&
			sch.Type == sr.TypeProtobuf {
			encoded, err := fileDescriptor(reg, sch)
			if err != nil {
				writeError(w, http.StatusUnprocessableEntity, 42201, "Invalid schema: "+err.Error())
				return
			}
			fields["schema"], _ = json.Marshal(encoded)
			out, _ = json.Marshal(fields)
		}
		for k, v := range rec.Header() {
			if k != "Content-Length" {
				w.Header()[k] = v
			}
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(out)
	})
}

// fileDescriptor compiles a .proto and its references (each imported by its reference name) and returns
// the main file's FileDescriptorProto, base64-encoded.
func fileDescriptor(reg *srfake.Registry, sch sr.Schema) (string, error) {
	const root = "default.proto"
	files := map[string]string{root: sch.Schema}
	if err := addProtoRefs(reg, sch.References, files, 0); err != nil {
		return "", err
	}
	compiler := protocompile.Compiler{
		Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{
			Accessor: protocompile.SourceAccessorFromMap(files),
		}),
	}
	compiled, err := compiler.Compile(context.Background(), root)
	if err != nil {
		return "", err
	}
	raw, err := proto.Marshal(protodesc.ToFileDescriptorProto(compiled[0]))
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(raw), nil
}

func addProtoRefs(reg *srfake.Registry, refs []sr.SchemaReference, files map[string]string, depth int) error {
	if depth > 32 {
		return fmt.Errorf("references nested too deep")
	}
	for _, ref := range refs {
		s, ok := reg.GetSchema(ref.Subject, ref.Version)
		if !ok {
			return fmt.Errorf("reference %q: subject %q version %d not found", ref.Name, ref.Subject, ref.Version)
		}
		files[ref.Name] = s.Schema.Schema
		if err := addProtoRefs(reg, s.References, files, depth+1); err != nil {
			return err
		}
	}
	return nil
}
