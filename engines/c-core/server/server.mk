# server/server.mk - nano-wss, the WebSocket server (included by ../Makefile).
#
# Built from server/*.c on the public header and $(BUILD)/libnano.a, plus
# libwebsockets: the one extra dependency, of this program only (the library
# stays libc + libm). Linked dynamically whatever STATIC says: Debian ships
# libwebsockets as a shared library. `make SANITIZE=1` gives build-san/nano-wss.

# This file is read before the Makefile's own `all` rule: keep `all` the default.
ifeq ($(.DEFAULT_GOAL),)
.DEFAULT_GOAL := all
endif

WSS_SRC := $(wildcard server/*.c)
WSS_OBJ := $(WSS_SRC:%.c=$(BUILD)/%.o)
WSS_CFLAGS := $(shell pkg-config --cflags libwebsockets 2>/dev/null)
WSS_LIBS := $(shell pkg-config --libs libwebsockets 2>/dev/null || echo -lwebsockets)

ifneq ($(WSS_SRC),)
PROGRAMS += $(BUILD)/nano-wss
endif

$(WSS_OBJ): ALL_CFLAGS += $(WSS_CFLAGS) -pthread

$(BUILD)/nano-wss: $(WSS_OBJ) $(BUILD)/cli/load_report.o $(BUILD)/libnano.a
	$(CC) -o $@ $^ $(LDFLAGS_ALL) -pthread $(WSS_LIBS) $(LDLIBS)

-include $(WSS_OBJ:.o=.d)
