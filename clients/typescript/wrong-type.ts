// Must NOT compile: total_price is a number in the contract, not a string.
// tests/test_clients.py checks that tsc rejects this file.
import createClient from "openapi-fetch";
import type { paths } from "./schema";

const kanal = createClient<paths>({ baseUrl: "http://127.0.0.1:8080" });

export const wrong = kanal.POST("/api/v1/stores/{store_id}/orders", {
  params: { path: { store_id: 123 } },
  body: {
    external_id: "ORDER-1001",
    placed_at: "2026-05-18T10:00:00Z",
    total_price: "49.90",
    customer: { phone: "+33612345678" },
  },
});
