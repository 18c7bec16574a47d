"""tcp-zoo tests: black-box over real sockets, servers started as users start them."""
