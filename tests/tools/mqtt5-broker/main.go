// An MQTT 5 broker for the tests that Mosquitto cannot serve: Mochi MQTT
// (github.com/mochi-mqtt/server), a broker the gateway's authors did not write, on one TCP listener.
// Its only addition is an ACL: publishes to topics under the prefixes of -deny are refused, and Mochi
// answers a QoS 1 one with PUBACK 0x87, a QoS 2 one with PUBREC 0x87, and keeps the connection open
// (Mosquitto 2.0.11 closes it after such a refusal). -receive-maximum sets the
// Receive Maximum it announces (Mochi's default: 1024).
//
// It prints "listening on ADDRESS" once the listener is up, and stops on SIGTERM or SIGINT.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// denyWrites lets every client in and refuses publishes under its prefixes.
type denyWrites struct {
	mqtt.HookBase
	prefixes []string
}

func (h *denyWrites) ID() string { return "deny-writes" }

func (h *denyWrites) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

func (h *denyWrites) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool { return true }

func (h *denyWrites) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if !write {
		return true
	}
	for _, p := range h.prefixes {
		if strings.HasPrefix(topic, p) {
			return false
		}
	}
	return true
}

func main() {
	listen := flag.String("listen", "127.0.0.1:1883", "the TCP address to listen on")
	deny := flag.String("deny", "", "comma-separated topic prefixes whose publishes are refused")
	receiveMaximum := flag.Uint("receive-maximum", 1024, "the Receive Maximum announced to clients")
	flag.Parse()

	caps := mqtt.NewDefaultServerCapabilities()
	caps.ReceiveMaximum = uint16(*receiveMaximum)
	server := mqtt.New(&mqtt.Options{Capabilities: caps})
	hook := &denyWrites{}
	for _, p := range strings.Split(*deny, ",") {
		if p != "" {
			hook.prefixes = append(hook.prefixes, p)
		}
	}
	if err := server.AddHook(hook, nil); err != nil {
		log.Fatalf("mqtt5-broker: %v", err)
	}
	if err := server.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: *listen})); err != nil {
		log.Fatalf("mqtt5-broker: cannot listen on %s: %v", *listen, err)
	}
	// Serve starts the listeners and returns.
	if err := server.Serve(); err != nil {
		log.Fatalf("mqtt5-broker: %v", err)
	}
	fmt.Printf("listening on %s\n", *listen)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	_ = server.Close()
}
