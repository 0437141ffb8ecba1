// tlctl: the command-line client of tlserve. See client/tlctl_commands.h.

#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "client/tlctl_commands.h"

int main(int argc, char** argv) {
  tlserve::cli::RunOptions options;
  if (const char* server = std::getenv("TLSERVE_SERVER");
      server != nullptr && *server != '\0') {
    options.default_server = server;
  }
  if (const char* token = std::getenv("TLSERVE_TOKEN"); token != nullptr) {
    options.default_token = token;
  }
  if (const char* ca = std::getenv("TLSERVE_TLS_CA_FILE"); ca != nullptr) {
    options.default_tls_ca_file = ca;
  }
  options.out_is_tty = isatty(STDOUT_FILENO) == 1;
  if (winsize size{}; options.out_is_tty &&
                      ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0) {
    options.terminal_columns = size.ws_col;
  }
  std::vector<std::string> args(argv + 1, argv + argc);
  return tlserve::cli::RunTlctl(args, options, std::cout, std::cerr);
}
